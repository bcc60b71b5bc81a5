//! Running commands in a Docker container: attached to the caller's
//! terminal (stdin forwarded, the terminal resized whenever the caller's
//! is), or captured.

use super::{call, DockerRuntime};
use crate::{ExecOutput, ExecSpec, RuntimeError, RuntimeKind};
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::ResizeExecOptionsBuilder;
use futures_util::StreamExt;
use std::io::Write;
use tokio::io::AsyncWriteExt;

pub(super) async fn attached(
    rt: &DockerRuntime,
    id: &str,
    spec: &ExecSpec,
) -> Result<i64, RuntimeError> {
    let exec = rt
        .docker
        .create_exec(id, exec_config(spec))
        .await
        .map_err(call(format!("exec in {id}")))?;
    let started = rt
        .docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: spec.tty,
                ..Default::default()
            }),
        )
        .await
        .map_err(call(format!("exec in {id}")))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(RuntimeError::Call {
            runtime: RuntimeKind::Docker,
            operation: format!("exec in {id}"),
            message: "engine started the command detached".into(),
        });
    };
    if let (true, Some((rows, cols))) = (spec.tty, spec.size) {
        let opts = ResizeExecOptionsBuilder::default()
            .h(rows as i32)
            .w(cols as i32)
            .build();
        let _ = rt.docker.resize_exec(&exec.id, opts).await;
    }
    let resizer = match (spec.tty, spec.resize.clone()) {
        (true, Some(mut sizes)) => {
            let docker = rt.docker.clone();
            let exec_id = exec.id.clone();
            Some(tokio::spawn(async move {
                while sizes.changed().await.is_ok() {
                    let (rows, cols) = *sizes.borrow_and_update();
                    let opts = ResizeExecOptionsBuilder::default()
                        .h(i32::from(rows))
                        .w(i32::from(cols))
                        .build();
                    let _ = docker.resize_exec(&exec_id, opts).await;
                }
            }))
        }
        _ => None,
    };
    if spec.stdin {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
    }
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(chunk) = output.next().await {
        match chunk.map_err(call(format!("read exec output from {id}")))? {
            LogOutput::StdErr { message } => {
                let _ = stderr.write_all(&message);
                let _ = stderr.flush();
            }
            other => {
                let _ = stdout.write_all(&other.into_bytes());
                let _ = stdout.flush();
            }
        }
    }
    if let Some(r) = resizer {
        r.abort();
    }
    let inspected = rt
        .docker
        .inspect_exec(&exec.id)
        .await
        .map_err(call(format!("read exit code of exec in {id}")))?;
    Ok(inspected.exit_code.unwrap_or(-1))
}

pub(super) async fn capture(
    rt: &DockerRuntime,
    id: &str,
    spec: &ExecSpec,
) -> Result<ExecOutput, RuntimeError> {
    let mut config = exec_config(spec);
    config.attach_stdin = Some(false);
    config.tty = Some(false);
    let exec = rt
        .docker
        .create_exec(id, config)
        .await
        .map_err(call(format!("exec in {id}")))?;
    let started = rt
        .docker
        .start_exec(&exec.id, None)
        .await
        .map_err(call(format!("exec in {id}")))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(chunk) = output.next().await {
            match chunk.map_err(call(format!("read exec output from {id}")))? {
                LogOutput::StdErr { message } => err.extend_from_slice(&message),
                other => out.extend_from_slice(&other.into_bytes()),
            }
        }
    }
    let inspected = rt
        .docker
        .inspect_exec(&exec.id)
        .await
        .map_err(call(format!("read exit code of exec in {id}")))?;
    Ok(ExecOutput {
        code: inspected.exit_code.unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

fn exec_config(spec: &ExecSpec) -> ExecConfig {
    ExecConfig {
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(spec.tty),
        env: (!spec.env.is_empty())
            .then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: Some(spec.cmd.clone()),
        user: spec.user.clone(),
        working_dir: spec.workdir.clone(),
        ..Default::default()
    }
}
