//! Tests of loading `bottle.toml`: each class of error lands on the right
//! line, column and key; many errors come out together; the example config,
//! the defaults and the `bottle init` template load.

use super::*;
use bottle_policy::{HostPattern, Unknown, Verdict};
use std::collections::BTreeMap;

const PATH: &str = "/proj/bottle.toml";

/// The read-write mount exposing the config file, over the mounts as
/// written (the plan does the same over canonical ones).
fn exposing(c: &Config) -> Option<bottle_runtimes::Mount> {
    let mounts: Vec<bottle_runtimes::Mount> = c.mounts().iter().cloned().map(Into::into).collect();
    crate::mounts::exposing(c.source.as_deref()?, &mounts).cloned()
}

fn ok(src: &str) -> Config {
    match parse(src, Path::new(PATH)) {
        Ok(c) => c,
        Err(e) => panic!("expected the config to load, got:\n{e}"),
    }
}

fn errs(src: &str) -> Vec<ConfigError> {
    match parse(src, Path::new("bottle.toml")) {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.errors().to_vec(),
    }
}

/// Exactly one error; returns it after checking place, key and kind.
fn one(src: &str, line: usize, column: usize, key: &str, kind: ErrorKind) -> ConfigError {
    let all = errs(src);
    assert_eq!(all.len(), 1, "expected one error, got:\n{all:#?}");
    let e = all.into_iter().next().unwrap();
    assert_eq!(
        (e.line, e.column, e.key.as_deref(), e.kind),
        (Some(line), Some(column), Some(key), kind),
        "{e}"
    );
    e
}

/// The example the README shows; `bottle/tests/examples.rs` checks that the
/// README still shows exactly this file.
const EXAMPLE: &str = include_str!("../../../examples/bottle.toml");

#[test]
fn example_parses() {
    let c = ok(EXAMPLE);
    assert_eq!(c.name(), "demo");
    assert_eq!(c.runtime, RuntimeChoice::Auto);
    assert_eq!(c.agent.image, "bottle-agent:latest");
    assert_eq!(c.agent.command, ["sleep", "infinity"]);
    assert_eq!(c.agent.workdir, "/workspace");
    assert_eq!(
        c.agent.env.get("EDITOR"),
        Some(&EnvValue::Literal("vi".into()))
    );
    assert_eq!(c.agent.cpus, Some(2.0));
    assert_eq!(c.agent.memory.map(Memory::bytes), Some(4 << 30));
    assert_eq!(
        c.mounts(),
        [Mount {
            source: "/proj".into(),
            target: "/workspace".into(),
            read_only: false
        }]
    );

    let egress = c.egress_policy();
    let allow: Vec<String> = egress.allow.iter().map(ToString::to_string).collect();
    assert_eq!(
        allow,
        [
            "api.anthropic.com",
            "*.githubusercontent.com",
            "api.github.com:443"
        ]
    );
    assert_eq!(egress.unknown, Unknown::Deny);
    assert_eq!(egress.rules.len(), 1);
    assert_eq!(
        egress.rules[0].host,
        HostPattern::Exact("api.github.com".into())
    );
    assert_eq!(crate::plan::strings(&egress.rules[0].methods), ["GET"]);
    assert_eq!(
        crate::plan::strings(&egress.rules[0].paths),
        ["/repos/acme/"]
    );
    assert_eq!(egress.credentials.len(), 1);
    assert_eq!(egress.credentials[0].header.as_str(), "x-api-key");
    assert_eq!(egress.credentials[0].from_env, "ANTHROPIC_API_KEY");
    assert_eq!(
        egress.decide("raw.githubusercontent.com", 443).verdict,
        Verdict::Allow
    );
    assert_eq!(egress.decide("example.com", 443).verdict, Verdict::Deny);
    assert_eq!(egress.decide("api.github.com", 80).verdict, Verdict::Deny);

    let remote = &c.git.remotes[0];
    assert_eq!(remote.name, "app");
    assert_eq!(remote.upstream, "https://github.com/acme/app.git");
    assert_eq!(remote.push, ["agent/*"]);
    assert_eq!(remote.protected, ["main", "release/*"]);
    assert_eq!(remote.token_from_env.as_deref(), Some("GITHUB_TOKEN"));
    assert!(c.supervise.enabled);
    assert_eq!(c.source.as_deref(), Some(Path::new(PATH)));
    assert_eq!(c.dir, Path::new("/proj"));
    assert_eq!(c.policy().unwrap().bottle, "demo");
    // `./` is writable and holds the file: the agent could edit its policy.
    assert_eq!(
        exposing(&c).map(|m| m.target.clone()),
        Some("/workspace".to_string())
    );
}

#[test]
fn empty_file_gets_the_defaults() {
    let c = ok("");
    assert_eq!(c.name(), "proj");
    assert_eq!(c.runtime, RuntimeChoice::Auto);
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(c.agent.image, "bottle-agent:latest");
    assert_eq!(c.agent.command, ["sleep", "infinity"]);
    assert_eq!(c.agent.workdir, "/workspace");
    assert!(c.mounts().is_empty());
    assert!(c.agent.env.is_empty());
    assert_eq!((c.agent.cpus, c.agent.memory), (None, None));
    assert_eq!(c.egress_policy(), EgressPolicy::default());
    assert!(c.git.remotes.is_empty());
    assert!(c.supervise.enabled);
    assert!(exposing(&c).is_none());
    // Empty sections are the same as absent ones.
    let c2 = ok("[agent]\n[egress]\n[git]\n[supervise]\n");
    assert_eq!(
        (c2.agent, c2.egress, c2.supervise),
        (c.agent, c.egress, c.supervise)
    );
}

#[test]
fn default_for_dir_names_and_denies() {
    let c = default_for_dir(Path::new("/home/me/My Project!"));
    assert_eq!(c.name(), "my-project");
    assert_eq!(c.source, None);
    assert_eq!(c.dir, Path::new("/home/me/My Project!"));
    assert!(c.mounts().is_empty());
    assert_eq!(c.egress_policy(), EgressPolicy::default());
    assert_eq!(
        c.egress_policy().decide("example.com", 443).verdict,
        Verdict::Deny
    );
    assert_eq!(default_for_dir(Path::new("/___")).name(), "bottle");
    let long = default_for_dir(Path::new("/a-very-long-directory-name-that-goes-on"));
    assert_eq!(long.name(), "a-very-long-directory-name-tha");
}

#[test]
fn init_template_parses_to_safe_defaults() {
    let c = ok(INIT_TEMPLATE);
    assert_eq!(c.name(), "proj");
    assert!(c.mounts().is_empty());
    assert_eq!(c.egress_policy(), EgressPolicy::default());
    assert!(c.git.remotes.is_empty());
    assert!(c.supervise.enabled);
    // Every commented example in the template is itself valid: uncomment
    // the lines that look like settings and load again.
    let is_setting = |rest: &str| {
        (rest.starts_with('[') && rest.ends_with(']'))
            || rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
    };
    let uncommented: String = INIT_TEMPLATE
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => l,
        })
        // The commented examples replace these empty settings.
        .filter(|l| *l != "allow = []" && *l != "mounts = []")
        // Its parent does not exist here (`extends` has its own tests).
        .filter(|l| !l.starts_with("extends = "))
        .collect::<Vec<_>>()
        .join("\n");
    let full = ok(&uncommented);
    assert_eq!(full.name(), "my-project");
    assert_eq!(full.egress.allow.len(), 3);
    assert_eq!(full.egress.rules.len(), 1);
    assert_eq!(full.egress.credentials.len(), 1);
    assert_eq!(full.git.remotes.len(), 1);
    assert_eq!(full.mounts().len(), 1);
    assert_eq!(full.agent.memory.map(Memory::bytes), Some(4 << 30));
    assert_eq!(full.agent.provider, Provider::Claude);
    assert_eq!(full.agent.auth(), Some(AgentAuth::AnthropicApiKey));
    assert_eq!(
        full.agent.env["REGION"],
        EnvValue::Host("AWS_REGION".into())
    );
    assert!(INIT_TEMPLATE.contains("\n# extends = ["));
}

#[test]
fn relative_mounts_resolve_against_the_file_directory() {
    let c = ok(r#"
[agent]
mounts = ["./:/workspace:ro", "src/../data:/data", "/abs/x/.:/x:rw", "..:/parent"]
"#);
    let got: Vec<(String, &str, bool)> = c
        .mounts()
        .iter()
        .map(|m| {
            (
                m.source.display().to_string(),
                m.target.as_str(),
                m.read_only,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/proj".to_owned(), "/workspace", true),
            ("/proj/data".to_owned(), "/data", false),
            ("/abs/x".to_owned(), "/x", false),
            ("/".to_owned(), "/parent", false),
        ]
    );
    // Read-only: the config is not exposed. `..` is writable and holds it.
    assert_eq!(
        exposing(&c).map(|m| m.target.clone()),
        Some("/parent".to_string())
    );
}

#[test]
fn relative_file_path_is_made_absolute() {
    let c = parse("[agent]\nmounts = [\"./:/w\"]\n", Path::new("bottle.toml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.dir, cwd);
    assert_eq!(c.mounts()[0].source, cwd);
}

#[test]
fn memory_forms() {
    let mem = |v: &str| {
        ok(&format!("[agent]\nmemory = {v}\n"))
            .agent
            .memory
            .unwrap()
            .bytes()
    };
    assert_eq!(mem("\"4g\""), 4 << 30);
    assert_eq!(mem("\"512m\""), 512 << 20);
    assert_eq!(mem("\"65536k\""), 64 << 20);
    assert_eq!(mem("\"1073741824\""), 1 << 30);
    assert_eq!(mem("1073741824"), 1 << 30);
    assert_eq!(mem("1_073_741_824"), 1 << 30);
    assert_eq!(mem("0x4000_0000"), 1 << 30);

    let e = one(
        "[agent]\nmemory = \"1024k\"\n",
        2,
        10,
        "agent.memory",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("at least 64m"), "{e}");
    let e = one(
        "[agent]\nmemory = \"4 GB\"\n",
        2,
        10,
        "agent.memory",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("e.g. \"4g\""), "{e}");
    one(
        "[agent]\nmemory = -5\n",
        2,
        10,
        "agent.memory",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\nmemory = 1024\n",
        2,
        10,
        "agent.memory",
        ErrorKind::InvalidValue,
    );
    let e = one(
        "[agent]\nmemory = 4.5\n",
        2,
        10,
        "agent.memory",
        ErrorKind::WrongType,
    );
    assert_eq!(
        e.message,
        "expected a size string such as \"4g\" or a number of bytes, found float"
    );
}

#[test]
fn reserved_env_names_are_refused() {
    for name in [
        "HTTP_PROXY",
        "https_proxy",
        "No_Proxy",
        "ALL_PROXY",
        "BOTTLE_SIDECAR",
        "bottle_x",
    ] {
        let src = format!("[agent]\nenv = {{ {name} = \"x\" }}\n");
        let e = one(
            &src,
            2,
            9,
            &format!("agent.env.{name}"),
            ErrorKind::InvalidValue,
        );
        assert!(e.message.contains("bottle"), "{e}");
    }
    let e = one(
        "[agent.env]\n1BAD = \"x\"\n",
        2,
        1,
        "agent.env.1BAD",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("environment variable name"), "{e}");
    let e = one(
        "[agent.env]\n\"A B\" = \"x\"\n",
        2,
        1,
        "agent.env.\"A B\"",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("environment variable name"), "{e}");
    let e = one(
        "[agent.env]\nA = 1\n",
        2,
        5,
        "agent.env.A",
        ErrorKind::WrongType,
    );
    assert_eq!(e.message, "expected a string, found integer");
    assert_eq!(ok("[agent.env]\nPROXY_HTTP = \"ok\"\n").agent.env.len(), 1);
}

#[test]
fn unknown_keys_name_the_key_suggest_and_list() {
    let e = one(
        "[agent]\nimgae = \"x\"\n",
        2,
        1,
        "agent.imgae",
        ErrorKind::UnknownKey,
    );
    assert_eq!(
        e.message,
        "unknown key `imgae`; did you mean `image`? ([agent] allows: image, command, workdir, mounts, env, cpus, memory, pids, provider, auth, api_base, version)"
    );
    let e = one("[agnet]\n", 1, 2, "agnet", ErrorKind::UnknownKey);
    assert!(e.message.contains("did you mean `agent`?"), "{e}");
    assert!(
        e.message.contains(
            "the top level allows: name, extends, runtime, agent, egress, git, supervise"
        ),
        "{e}"
    );
    let e = one("image = \"x\"\n", 1, 1, "image", ErrorKind::UnknownKey);
    assert!(e.message.contains("`image` belongs in [agent]"), "{e}");
    let e = one(
        "[[egress.rules]]\nhost = \"a.com\"\n",
        1,
        10,
        "egress.rules",
        ErrorKind::UnknownKey,
    );
    assert!(e.message.contains("did you mean `rule`?"), "{e}");
    let e = one(
        "[[git.remote]]\nname = \"a\"\nupstream = \"https://h.com/a\"\nbranch = \"x\"\n",
        4,
        1,
        "git.remote[0].branch",
        ErrorKind::UnknownKey,
    );
    assert!(
        e.message
            .contains("[[git.remote]] allows: name, upstream, push, protected, token_from_env"),
        "{e}"
    );
    // Unknown keys under a known table written with dotted keys.
    one(
        "agent.volumes = []\n",
        1,
        7,
        "agent.volumes",
        ErrorKind::UnknownKey,
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let e = one(
        "[agent]\ncommand = 3\n",
        2,
        11,
        "agent.command",
        ErrorKind::WrongType,
    );
    assert_eq!(e.message, "expected an array of strings, found integer");
    let e = one(
        "[agent]\ncommand = [\"a\", 2]\n",
        2,
        17,
        "agent.command[1]",
        ErrorKind::WrongType,
    );
    assert_eq!(
        e.message,
        "expected a string (agent.command holds strings), found integer"
    );
    let e = one("agent = \"x\"\n", 1, 9, "agent", ErrorKind::WrongType);
    assert_eq!(e.message, "expected a table ([agent]), found string");
    let e = one(
        "[egress.rule]\nhost = \"a.com\"\n",
        1,
        1,
        "egress.rule",
        ErrorKind::WrongType,
    );
    assert!(
        e.message.starts_with(
            "expected an array of tables ([[egress.rule]]), found table; write [[egress.rule]]"
        ),
        "{e}"
    );
    let e = one(
        "[supervise]\nenabled = \"yes\"\n",
        2,
        11,
        "supervise.enabled",
        ErrorKind::WrongType,
    );
    assert_eq!(e.message, "expected true or false, found string");
    one(
        "[supervise]\ntimeout_secs = 0\n",
        2,
        16,
        "supervise.timeout_secs",
        ErrorKind::InvalidValue,
    );
    let c = ok("[[egress.credential]]\nhost = \"api.openai.com\"\nheader = \"authorization\"\nfrom_env = \"OPENAI_API_KEY\"\nscheme = \"Bearer\"\n");
    assert_eq!(
        c.egress_policy().credentials[0]
            .scheme
            .as_ref()
            .map(|s| s.as_str()),
        Some("Bearer")
    );
    one(
        "[[egress.credential]]\nhost = \"a.example\"\nheader = \"authorization\"\nfrom_env = \"K\"\nscheme = \"Bearer x\"\n",
        5,
        10,
        "egress.credential[0].scheme",
        ErrorKind::InvalidValue,
    );
    let c = ok("[supervise]\ntimeout_secs = 60\nmax_pending = 2\nrate_per_minute = 30\n");
    let s = c.policy().unwrap().supervise;
    assert_eq!(
        (s.timeout_secs, s.max_pending, s.rate_per_minute),
        (60, 2, 30)
    );
    let s = ok("").policy().unwrap().supervise;
    assert_eq!(
        (s.timeout_secs, s.max_pending, s.rate_per_minute),
        (300, 8, 12)
    );
    let e = one(
        "[agent]\ncpus = \"2\"\n",
        2,
        8,
        "agent.cpus",
        ErrorKind::WrongType,
    );
    assert_eq!(e.message, "expected a positive number, found string");
    one(
        "[egress]\nallow = \"a.com\"\n",
        2,
        9,
        "egress.allow",
        ErrorKind::WrongType,
    );
    one("name = 1979-05-27\n", 1, 8, "name", ErrorKind::WrongType);
}

#[test]
fn bad_values_use_the_rule_owners_messages() {
    let e = one(
        "[egress]\nallow = [\"a.com\", \"http://x\"]\n",
        2,
        19,
        "egress.allow[1]",
        ErrorKind::InvalidValue,
    );
    assert_eq!(
        e.message,
        bottle_policy::AllowRule::parse("http://x")
            .unwrap_err()
            .to_string()
    );
    assert_eq!(
        e.to_string(),
        "bottle.toml:2:19: egress.allow[1]: `http://x`: write a host pattern, not a URL (e.g. `api.example.com` or `api.example.com:8443`)"
    );
    let e = one(
        "[egress]\nallow = [\"127.1\"]\n",
        2,
        10,
        "egress.allow[0]",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("canonical IP"), "{e}");
    one(
        "[egress]\nallow = [\"a.com:99999\"]\n",
        2,
        10,
        "egress.allow[0]",
        ErrorKind::InvalidValue,
    );

    let e = one(
        "name = \"My_Bottle\"\n",
        1,
        8,
        "name",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("1 to 30 characters"), "{e}");
    let e = one(
        "runtime = \"dokcer\"\n",
        1,
        11,
        "runtime",
        ErrorKind::InvalidValue,
    );
    assert_eq!(
        e.message,
        "`dokcer` is not one of \"auto\", \"docker\", \"apple-container\", \"smolvm\"; did you mean `docker`?"
    );
    one(
        "[egress]\nunknown = \"allow\"\n",
        2,
        11,
        "egress.unknown",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\nworkdir = \"work\"\n",
        2,
        11,
        "agent.workdir",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\ncpus = 0\n",
        2,
        8,
        "agent.cpus",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\ncpus = -1.5\n",
        2,
        8,
        "agent.cpus",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\ncpus = nan\n",
        2,
        8,
        "agent.cpus",
        ErrorKind::InvalidValue,
    );
    assert_eq!(ok("[agent]\ncpus = 0.5\n").agent.cpus, Some(0.5));
    one(
        "[agent]\ncommand = []\n",
        2,
        11,
        "agent.command",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\ncommand = [\"\"]\n",
        2,
        12,
        "agent.command[0]",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\nimage = \"\"\n",
        2,
        9,
        "agent.image",
        ErrorKind::InvalidValue,
    );
}

#[test]
fn bad_mounts() {
    let e = one(
        "[agent]\nmounts = [\"/a:/b:rx\"]\n",
        2,
        11,
        "agent.mounts[0]",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("use `ro` or `rw`"), "{e}");
    one(
        "[agent]\nmounts = [\"/a\"]\n",
        2,
        11,
        "agent.mounts[0]",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\nmounts = [\"/a:rel\"]\n",
        2,
        11,
        "agent.mounts[0]",
        ErrorKind::InvalidValue,
    );
    one(
        "[agent]\nmounts = [\"~/x:/x\"]\n",
        2,
        11,
        "agent.mounts[0]",
        ErrorKind::InvalidValue,
    );
    let e = one(
        "[agent]\nmounts = [\"/a:/w\", \"/b:/w/:ro\"]\n",
        2,
        20,
        "agent.mounts[1]",
        ErrorKind::InvalidValue,
    );
    assert!(
        e.message.contains("already mounted by agent.mounts[0]"),
        "{e}"
    );
}

#[test]
fn egress_rules_and_credentials() {
    let e = one(
        "[[egress.rule]]\nhost = \"a.com\"\nmethods = [\"GET\", \"get\"]\n",
        3,
        19,
        "egress.rule[0].methods[1]",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.ends_with("did you mean `GET`?"), "{e}");
    assert!(
        e.message
            .contains("\"GET\", \"HEAD\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\", \"OPTIONS\""),
        "{e}"
    );
    one(
        "[[egress.rule]]\nhost = \"a.com\"\nmethods = [\"CONNECT\"]\n",
        3,
        12,
        "egress.rule[0].methods[0]",
        ErrorKind::InvalidValue,
    );
    one(
        "[[egress.rule]]\nhost = \"a.com\"\npaths = [\"repos/\"]\n",
        3,
        10,
        "egress.rule[0].paths[0]",
        ErrorKind::InvalidValue,
    );
    let e = one(
        "[[egress.rule]]\nmethods = [\"GET\"]\n",
        1,
        1,
        "egress.rule[0].host",
        ErrorKind::MissingKey,
    );
    assert_eq!(
        e.message,
        "required key is missing: every [[egress.rule]] needs `host`, a host pattern such as `api.github.com`"
    );
    one(
        "[[egress.rule]]\nhost = \"*\"\n",
        2,
        8,
        "egress.rule[0].host",
        ErrorKind::InvalidValue,
    );

    let cred = |header: &str, env: &str| {
        format!("[[egress.credential]]\nhost = \"a.com\"\nheader = \"{header}\"\nfrom_env = \"{env}\"\n")
    };
    one(
        &cred("x api", "K"),
        3,
        10,
        "egress.credential[0].header",
        ErrorKind::InvalidValue,
    );
    one(
        &cred("Proxy-Authorization", "K"),
        3,
        10,
        "egress.credential[0].header",
        ErrorKind::InvalidValue,
    );
    one(
        &cred("x-api-key", "A-B"),
        4,
        12,
        "egress.credential[0].from_env",
        ErrorKind::InvalidValue,
    );
    let all = errs("[[egress.credential]]\n[[egress.credential]]\nhost = \"a.com\"\n");
    let keys: Vec<&str> = all.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        [
            "egress.credential[0].host",
            "egress.credential[0].header",
            "egress.credential[0].from_env",
            "egress.credential[1].header",
            "egress.credential[1].from_env",
        ]
    );
    assert_eq!(all[3].line, Some(2));
    // An inline array of tables works as well as [[…]].
    let c = ok("[egress]\ncredential = [{ host = \"a.com\", header = \"authorization\", from_env = \"TOKEN\" }]\n");
    assert_eq!(c.egress.credentials[0].from_env, "TOKEN");
}

#[test]
fn git_remotes() {
    let remote = |name: &str, upstream: &str| {
        format!("[[git.remote]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n")
    };
    let e = one(
        &remote("app", "git@github.com:acme/app.git"),
        3,
        12,
        "git.remote[0].upstream",
        ErrorKind::InvalidValue,
    );
    assert!(
        e.message.contains("ssh has no route out of a bottle"),
        "{e}"
    );
    one(
        &remote("app", "http://github.com/acme/app.git"),
        3,
        12,
        "git.remote[0].upstream",
        ErrorKind::InvalidValue,
    );
    one(
        &remote("app", "https://user:tok@github.com/a.git"),
        3,
        12,
        "git.remote[0].upstream",
        ErrorKind::InvalidValue,
    );
    one(
        &remote("a/b", "https://github.com/a.git"),
        2,
        8,
        "git.remote[0].name",
        ErrorKind::InvalidValue,
    );
    let twice = format!(
        "{}{}",
        remote("app", "https://h.com/a"),
        remote("app", "https://h.com/b")
    );
    let e = one(&twice, 5, 8, "git.remote[1].name", ErrorKind::InvalidValue);
    assert!(
        e.message.contains("already the name of git.remote[0]"),
        "{e}"
    );
    let bad_refs = format!(
        "{}push = [\"ok/*\", \"a..b\"]\nprotected = [\"main \"]\n",
        remote("app", "https://h.com/a")
    );
    let all = errs(&bad_refs);
    let keys: Vec<&str> = all.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(
        keys,
        ["git.remote[0].push[1]", "git.remote[0].protected[0]"]
    );
    let e = one(
        "[[git.remote]]\nname = \"app\"\n",
        1,
        1,
        "git.remote[0].upstream",
        ErrorKind::MissingKey,
    );
    assert!(
        e.message.contains("every [[git.remote]] needs `upstream`"),
        "{e}"
    );
    one(
        "[git]\nremote = { name = \"a\" }\n",
        2,
        10,
        "git.remote",
        ErrorKind::WrongType,
    );
}

#[test]
fn many_errors_are_reported_together_in_file_order() {
    let src = r#"name = "Bad Name"
runtime = "podman"

[agent]
imgae = "x"
command = "sleep"
memory = "lots"
mounts = ["relative"]
env = { HTTP_PROXY = "http://evil", BOTTLE_X = "1" }

[egress]
allow = ["api.anthropic.com", "https://api.openai.com/", "a..b"]
unknown = "maybe"

[[egress.rule]]
methods = ["FETCH"]

[supervise]
enabled = 1
extra = true
"#;
    let err = parse(src, Path::new("bottle.toml")).unwrap_err();
    let got: Vec<(usize, usize, &str)> = err
        .errors()
        .iter()
        .map(|e| {
            (
                e.line.unwrap(),
                e.column.unwrap(),
                e.key.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, 8, "name"),
            (2, 11, "runtime"),
            (5, 1, "agent.imgae"),
            (6, 11, "agent.command"),
            (7, 10, "agent.memory"),
            (8, 11, "agent.mounts[0]"),
            (9, 9, "agent.env.HTTP_PROXY"),
            (9, 37, "agent.env.BOTTLE_X"),
            (12, 31, "egress.allow[1]"),
            (12, 58, "egress.allow[2]"),
            (13, 11, "egress.unknown"),
            (15, 1, "egress.rule[0].host"),
            (16, 12, "egress.rule[0].methods[0]"),
            (19, 11, "supervise.enabled"),
            (20, 1, "supervise.extra"),
        ]
    );
    // Display: one line per error, each starting with file:line:col.
    let text = err.to_string();
    assert_eq!(text.lines().count(), got.len());
    assert!(
        text.lines().all(|l| l.starts_with("bottle.toml:")),
        "{text}"
    );
}

#[test]
fn syntax_errors_have_positions() {
    let all = errs("name = \"demo\n[agent]\nimage = \n");
    assert!(
        all.iter()
            .all(|e| e.kind == ErrorKind::Syntax && e.key.is_none()),
        "{all:#?}"
    );
    assert_eq!((all[0].line, all[0].column), (Some(1), Some(13)));
    assert!(all[0].message.starts_with("invalid TOML: "), "{}", all[0]);
    assert!(all.iter().any(|e| e.line == Some(3)), "{all:#?}");
    // One report per line, however much the parser's recovery echoes.
    let mut lines: Vec<_> = all.iter().map(|e| e.line).collect();
    lines.dedup();
    assert_eq!(lines.len(), all.len());

    let dup = errs("name = \"a\"\nname = \"b\"\n");
    assert_eq!((dup[0].line, dup[0].kind), (Some(2), ErrorKind::Syntax));
    assert!(dup[0].message.contains("duplicate"), "{}", dup[0]);
}

#[test]
fn io_errors_name_the_path() {
    let path = Path::new("/nonexistent/dir/bottle.toml");
    let err = load(path).unwrap_err();
    assert!(err.is_io());
    assert!(std::error::Error::source(&err).is_some());
    let e = &err.errors()[0];
    assert_eq!(
        (e.kind, e.line, e.key.as_deref()),
        (ErrorKind::Io, None, None)
    );
    assert!(
        err.to_string()
            .starts_with("/nonexistent/dir/bottle.toml: cannot read the config file: "),
        "{err}"
    );
}

#[test]
fn load_and_load_dir_read_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let missing = load_dir(&dir).unwrap();
    assert_eq!(missing.source, None);
    assert_eq!(missing.dir, dir);
    std::fs::write(
        dir.join(FILE_NAME),
        "name = \"from-file\"\n[agent]\nmounts = [\"sub:/s:ro\"]\n",
    )
    .unwrap();
    let c = load_dir(&dir).unwrap();
    assert_eq!(c.name(), "from-file");
    assert_eq!(c.mounts()[0].source, dir.join("sub"));
    assert_eq!(load(&dir.join(FILE_NAME)).unwrap(), c);
    std::fs::write(dir.join(FILE_NAME), "bogus = 1\n").unwrap();
    let err = load_dir(&dir).unwrap_err();
    assert_eq!(err.errors()[0].file, dir.join(FILE_NAME));
}

#[test]
fn errors_serialise_for_json_output() {
    let err = parse("[agent]\nmemory = \"1k\"\n", Path::new("bottle.toml")).unwrap_err();
    let json = serde_json::to_value(err.errors()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "file": "bottle.toml",
            "line": 2,
            "column": 10,
            "key": "agent.memory",
            "kind": "invalid_value",
            "message": "`1k`: at least 64m (67108864 bytes) is needed",
        }])
    );
}

#[test]
fn config_serialises_for_dry_run() {
    let c = ok(EXAMPLE);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["name"], "demo");
    assert_eq!(json["agent"]["memory"], 4u64 << 30);
    assert_eq!(json["agent"]["mounts"][0]["source"], "/proj");
    assert_eq!(json["egress"]["allow"][1], "*.githubusercontent.com");
}

#[test]
fn limits_load_and_fall_back_to_defaults() {
    let c = ok("[agent]\npids = 512\n[sidecar]\nmax_connections = 64\nbody_timeout = 5\naudit_max_bytes = 8388608\n");
    assert_eq!(c.agent.pids, Some(512));
    let l = c.sidecar_limits();
    assert_eq!(l.max_connections, 64);
    assert_eq!(l.body_timeout_secs, 5);
    assert_eq!(l.audit_max_bytes, 8 << 20);
    let d = bottle_policy::Limits::default();
    assert_eq!(l.max_connections_per_client, d.max_connections_per_client);
    assert_eq!(c.policy().unwrap().limits, l);
    assert_eq!(ok("").sidecar_limits(), d);
}

#[test]
fn limits_out_of_range_are_placed_errors() {
    let e = one(
        "[agent]\npids = 1\n",
        2,
        8,
        "agent.pids",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("from 16 to"), "{e}");
    let e = one(
        "[sidecar]\nidle_timeout = \"5m\"\n",
        2,
        16,
        "sidecar.idle_timeout",
        ErrorKind::WrongType,
    );
    assert!(e.message.contains("a whole number from 1 to 86400"), "{e}");
    let all = errs("[sidecar]\nmax_connections = 0\nhandshake_timeout = -3\nbogus = 1\n");
    assert_eq!(all.len(), 3, "{all:#?}");
}

// ---------------------------------------------------------------------------
// [agent] provider, auth, api_base, version

#[test]
fn agent_provider_keys_load_typed() {
    let c = ok(r#"
[agent]
provider = "claude"
auth = "CLAUDE_CODE_OAUTH_TOKEN"
api_base = "https://llm.internal:8443/v1"
version = "2.0.14"
"#);
    assert_eq!(c.agent.provider, Provider::Claude);
    assert_eq!(c.agent.auth(), Some(AgentAuth::ClaudeCodeOauthToken));
    let base = c.agent.api_base.clone().unwrap();
    assert_eq!(
        (
            base.scheme.as_str(),
            base.host.as_str(),
            base.port,
            base.path.as_str()
        ),
        ("https", "llm.internal", Some(8443), "/v1")
    );
    assert_eq!(base.to_string(), "https://llm.internal:8443/v1");
    assert_eq!(
        c.agent.version.as_ref().map(AgentVersion::as_str),
        Some("2.0.14")
    );
    // Serialised lower-case / as written, for --json.
    let json = serde_json::to_value(&c.agent).unwrap();
    assert_eq!(json["provider"], "claude");
    assert_eq!(json["auth"], "CLAUDE_CODE_OAUTH_TOKEN");
    assert_eq!(json["api_base"], "https://llm.internal:8443/v1");

    // Defaults: shell without auth; claude and codex take their API key.
    assert_eq!(ok("").agent.provider, Provider::Shell);
    assert_eq!(ok("").agent.auth(), None);
    let claude = ok("[agent]\nprovider = \"claude\"\n");
    assert_eq!(claude.agent.auth(), Some(AgentAuth::AnthropicApiKey));
    let codex = ok("[agent]\nprovider = \"codex\"\n");
    assert_eq!(codex.agent.auth(), Some(AgentAuth::OpenaiApiKey));
    let login = ok("[agent]\nprovider = \"codex\"\nauth = \"codex-login\"\n");
    assert_eq!(login.agent.auth(), Some(AgentAuth::CodexLogin));
    assert_eq!(AgentAuth::CodexLogin.host_var(), None);
    for v in [
        "1",
        "2.0.14-beta.1",
        "1.0.0+build.5",
        "latest",
        &"9".repeat(64),
    ] {
        assert!(AgentVersion::parse(v).is_ok(), "{v}");
    }
    let plain = ok("[agent]\napi_base = \"http://ollama\"\n");
    assert_eq!(plain.agent.api_base.unwrap().to_string(), "http://ollama");
}

#[test]
fn agent_provider_refusals_are_placed() {
    let e = one(
        "[agent]\nprovider = \"gemini\"\n",
        2,
        12,
        "agent.provider",
        ErrorKind::InvalidValue,
    );
    assert!(
        e.message.contains("\"claude\", \"codex\", \"shell\""),
        "{e}"
    );
    let e = one(
        "[agent]\nprovider = \"Claude\"\n",
        2,
        12,
        "agent.provider",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("did you mean `claude`?"), "{e}");
    let e = one(
        "[agent]\nauth = \"GITHUB_TOKEN\"\n",
        2,
        8,
        "agent.auth",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("\"codex-login\""), "{e}");

    // auth must fit the provider.
    let e = one(
        "[agent]\nauth = \"ANTHROPIC_API_KEY\"\n",
        2,
        8,
        "agent.auth",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("provider is \"shell\""), "{e}");
    assert!(
        e.message
            .contains("set provider = \"claude\" or \"codex\", or remove auth"),
        "{e}"
    );
    let e = one(
        "[agent]\nprovider = \"claude\"\nauth = \"OPENAI_API_KEY\"\n",
        3,
        8,
        "agent.auth",
        ErrorKind::InvalidValue,
    );
    assert_eq!(
        e.message,
        "`OPENAI_API_KEY` does not fit provider \"claude\"; claude takes \"ANTHROPIC_API_KEY\" or \"CLAUDE_CODE_OAUTH_TOKEN\""
    );
    let e = one(
        "[agent]\nprovider = \"codex\"\nauth = \"CLAUDE_CODE_OAUTH_TOKEN\"\n",
        3,
        8,
        "agent.auth",
        ErrorKind::InvalidValue,
    );
    assert!(
        e.message
            .contains("codex takes \"OPENAI_API_KEY\" or \"codex-login\""),
        "{e}"
    );

    for (bad, says) in [
        ("ftp://llm/v1", "starts with https:// or http://"),
        ("llm.internal", "starts with https:// or http://"),
        ("https://u:p@llm/v1", "cannot carry a user or password"),
        ("https://llm/v1?k=1", "without a query or fragment"),
        ("https://llm/v1#x", "without a query or fragment"),
        ("http://127.0.0.1:11434", "never by host address"),
        ("http://[::1]:11434/v1", "never by host address"),
        ("http://10.0.0.7", "never by host address"),
        ("https://*.example.com", "a wildcard names no one host"),
        ("https://ll_m/v1", "ll_m"),
        ("https://llm:0/v1", "port is a number"),
        ("https://llm:99999", "port is a number"),
        ("https://llm/a b", "percent-encode"),
    ] {
        let src = format!("[agent]\napi_base = \"{bad}\"\n");
        let e = one(&src, 2, 12, "agent.api_base", ErrorKind::InvalidValue);
        assert!(e.message.contains(says), "{bad}: {e}");
    }
    for bad in ["", "-1", "1.0 ", "1;rm", "1.0/x", "a$b", &"1".repeat(65)] {
        let src = format!("[agent]\nversion = \"{bad}\"\n");
        let e = one(&src, 2, 11, "agent.version", ErrorKind::InvalidValue);
        assert!(e.message.contains("is not a version"), "{bad:?}: {e}");
    }
    one(
        "[agent]\nversion = 2\n",
        2,
        11,
        "agent.version",
        ErrorKind::WrongType,
    );
}

// ---------------------------------------------------------------------------
// extends

/// Writes `files` (name, contents) into a fresh directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, src).unwrap();
    }
    dir
}

fn load_errs(path: &Path) -> Vec<ConfigError> {
    match load(path) {
        Ok(_) => panic!("expected errors loading {}", path.display()),
        Err(e) => e.errors().to_vec(),
    }
}

#[test]
fn extends_merges_a_two_level_chain() {
    let t = tree(&[
        (
            "base/root.toml",
            r#"
[agent]
image = "root:1"
cpus = 1
mounts = ["./data:/data:ro"]
env = { A = "root", B = "root" }

[egress]
allow = ["a.example.com", "shared.example.com"]
upstream_roots = ["ca.pem"]
"#,
        ),
        (
            "base/mid.toml",
            r#"
extends = ["root.toml"]
[agent]
image = "mid:1"
env = { B = "mid", C = "mid" }
[egress]
allow = ["b.example.com"]
unknown = "ask"
[[egress.rule]]
host = "b.example.com"
methods = ["GET"]
"#,
        ),
        (
            "proj/bottle.toml",
            r#"
name = "child"
extends = ["../base/mid.toml"]
[agent]
cpus = 2
mounts = ["./:/workspace"]
env = { C = "child" }
[egress]
allow = ["c.example.com", "shared.example.com"]
[[egress.rule]]
host = "c.example.com"
"#,
        ),
    ]);
    let root = std::fs::canonicalize(t.path()).unwrap();
    let c = load(&root.join("proj/bottle.toml")).unwrap();
    assert_eq!(c.name(), "child");
    // Later wins for scalars.
    assert_eq!(c.agent.image, "mid:1");
    assert_eq!(c.agent.cpus, Some(2.0));
    // Tables merge key by key, child wins.
    let env: Vec<(String, String)> = c
        .agent
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(
        env,
        [
            ("A".into(), "root".into()),
            ("B".into(), "mid".into()),
            ("C".into(), "child".into())
        ]
    );
    assert_eq!(c.egress.unknown, Unknown::Ask);
    // Arrays concatenate parent first, duplicate allows removed.
    let allow: Vec<String> = c.egress.allow.iter().map(ToString::to_string).collect();
    assert_eq!(
        allow,
        [
            "a.example.com",
            "shared.example.com",
            "b.example.com",
            "c.example.com"
        ]
    );
    let rules: Vec<String> = c.egress.rules.iter().map(|r| r.host.to_string()).collect();
    assert_eq!(rules, ["b.example.com", "c.example.com"]);
    // Relative paths resolve against the file that wrote them.
    let mounts: Vec<String> = c.mounts().iter().map(ToString::to_string).collect();
    assert_eq!(
        mounts,
        [
            format!("{}:/data:ro", root.join("base/data").display()),
            format!("{}:/workspace:rw", root.join("proj").display()),
        ]
    );
    assert_eq!(c.upstream_roots, [root.join("base/ca.pem")]);
    // Every file read, parents first; `source` stays the top file.
    assert_eq!(
        c.sources,
        [
            root.join("base/root.toml"),
            root.join("base/mid.toml"),
            root.join("proj/bottle.toml")
        ]
    );
    assert_eq!(c.source, Some(root.join("proj/bottle.toml")));
    assert_eq!(c.dir, root.join("proj"));
}

#[test]
fn extends_lists_parents_in_order_and_reads_a_diamond_once() {
    let t = tree(&[
        ("common.toml", "[egress]\nallow = [\"common.example\"]\n"),
        (
            "a.toml",
            "extends = [\"common.toml\"]\n[egress]\nallow = [\"a.example\"]\n[agent]\nimage = \"a\"\n",
        ),
        (
            "b.toml",
            "extends = [\"common.toml\"]\n[egress]\nallow = [\"b.example\"]\n[agent]\nimage = \"b\"\n",
        ),
        ("bottle.toml", "extends = [\"a.toml\", \"b.toml\"]\n"),
    ]);
    let c = load(&t.path().join("bottle.toml")).unwrap();
    let allow: Vec<String> = c.egress.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["common.example", "a.example", "b.example"]);
    // b.toml is later than a.toml.
    assert_eq!(c.agent.image, "b");
    assert_eq!(c.sources.len(), 4);
}

#[test]
fn extends_cycles_show_the_chain() {
    let t = tree(&[
        ("a.toml", "extends = [\"b.toml\"]\n"),
        ("b.toml", "\n\nextends = [\"a.toml\"]\n"),
        ("self.toml", "extends = [\"self.toml\"]\n"),
    ]);
    let a = t.path().join("a.toml");
    let b = t.path().join("b.toml");
    let all = load_errs(&a);
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(
        (e.file.clone(), e.line, e.column, e.key.as_deref()),
        (b.clone(), Some(3), Some(12), Some("extends[0]"))
    );
    assert!(
        e.message.contains(&format!(
            "{} -> {} -> {}",
            a.display(),
            b.display(),
            a.display()
        )),
        "{e}"
    );
    let me = t.path().join("self.toml");
    let all = load_errs(&me);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0]
            .message
            .contains(&format!("{} -> {}", me.display(), me.display())),
        "{}",
        all[0]
    );
    assert_eq!((all[0].line, all[0].column), (Some(1), Some(12)));
}

#[test]
fn a_missing_parent_names_both_files() {
    let t = tree(&[(
        "bottle.toml",
        "name = \"x\"\nextends = [\"nope/base.toml\"]\n",
    )]);
    let top = t.path().join("bottle.toml");
    let all = load_errs(&top);
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(
        (e.file.clone(), e.line, e.column, e.key.as_deref(), e.kind),
        (
            top.clone(),
            Some(2),
            Some(12),
            Some("extends[0]"),
            ErrorKind::Io
        )
    );
    assert!(
        e.message.contains(&format!(
            "cannot read {} (extended by {})",
            t.path().join("nope/base.toml").display(),
            top.display()
        )),
        "{e}"
    );
    assert!(e.message.contains("fix the path"), "{e}");
}

#[test]
fn errors_in_a_parent_carry_the_parents_path_and_line() {
    let t = tree(&[
        (
            "base.toml",
            "[agent]\nimage = \"x\"\nimgae = \"y\"\n[egress]\nallow = [\"http://x\"]\n",
        ),
        (
            "bottle.toml",
            "extends = [\"base.toml\"]\n[agent]\ncpus = 0\n",
        ),
    ]);
    let base = t.path().join("base.toml");
    let top = t.path().join("bottle.toml");
    let all = load_errs(&top);
    let got: Vec<(PathBuf, Option<usize>, Option<&str>)> = all
        .iter()
        .map(|e| (e.file.clone(), e.line, e.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (base.clone(), Some(3), Some("agent.imgae")),
            (base.clone(), Some(5), Some("egress.allow[0]")),
            (top.clone(), Some(3), Some("agent.cpus")),
        ],
        "{all:#?}"
    );
    assert_eq!(all[0].kind, ErrorKind::UnknownKey);
}

#[test]
fn a_parent_cannot_name_the_bottle_or_clash_with_its_child() {
    let t = tree(&[
        (
            "base.toml",
            "name = \"shared\"\n[agent]\nmounts = [\"/a:/data\"]\n[[git.remote]]\nname = \"app\"\nupstream = \"https://github.com/acme/app.git\"\n",
        ),
        ("bottle.toml", "extends = [\"base.toml\"]\n"),
        (
            "ok-base.toml",
            "[agent]\nmounts = [\"/a:/data\"]\nprovider = \"claude\"\n[[git.remote]]\nname = \"app\"\nupstream = \"https://github.com/acme/app.git\"\n",
        ),
        (
            "clash.toml",
            "extends = [\"ok-base.toml\"]\n[agent]\nmounts = [\"/b:/data/\"]\nauth = \"CLAUDE_CODE_OAUTH_TOKEN\"\n[[git.remote]]\nname = \"app\"\nupstream = \"https://github.com/acme/other.git\"\n",
        ),
        (
            "unfit.toml",
            "extends = [\"ok-base.toml\"]\n[agent]\nauth = \"OPENAI_API_KEY\"\n",
        ),
    ]);
    let all = load_errs(&t.path().join("bottle.toml"));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        (all[0].file.clone(), all[0].line, all[0].key.as_deref()),
        (t.path().join("base.toml"), Some(1), Some("name"))
    );
    assert!(all[0].message.contains("set `name` in the extending file"));

    // A parent's provider makes a child's auth fit; duplicates across files
    // are placed in the later file.
    let clash = t.path().join("clash.toml");
    let all = load_errs(&clash);
    let got: Vec<(Option<usize>, Option<&str>)> =
        all.iter().map(|e| (e.line, e.key.as_deref())).collect();
    assert_eq!(
        got,
        [
            (Some(3), Some("agent.mounts[0]")),
            (Some(6), Some("git.remote[0]"))
        ],
        "{all:#?}"
    );
    assert!(all[0]
        .message
        .contains("`/data` is also in agent.mounts of"));
    assert!(all[1].message.contains("remote names must be unique"));
    let unfit = load_errs(&t.path().join("unfit.toml"));
    assert_eq!(unfit.len(), 1, "{unfit:#?}");
    assert_eq!(
        (unfit[0].line, unfit[0].column, unfit[0].key.as_deref()),
        (Some(3), Some(8), Some("agent.auth"))
    );
    assert!(unfit[0]
        .message
        .contains("does not fit provider \"claude\""));
}

/// The pin is taken from the plan of the RESOLVED config, so an `extends`
/// parent that widens egress (or reads a host variable) needs consent like
/// bottle.toml itself.
#[test]
fn a_widening_parent_is_a_widening_for_the_pin() {
    let t = tree(&[
        ("base.toml", "[egress]\nallow = [\"api.anthropic.com\"]\n"),
        (
            "proj/bottle.toml",
            "name = \"p\"\nextends = [\"../base.toml\"]\n",
        ),
    ]);
    let root = std::fs::canonicalize(t.path()).unwrap();
    let host = crate::host::Host::fixed(root.join("state"), vec![], BTreeMap::new());
    let pinned = || {
        let c = load(&root.join("proj/bottle.toml")).unwrap();
        let plan = crate::plan::build(
            &host,
            &c,
            "bottle.toml",
            None,
            bottle_runtimes::RuntimeKind::Docker,
            &crate::mounts::Grants::default(),
        )
        .unwrap();
        crate::pin::Pinned::of(&plan)
    };
    let before = pinned();
    assert!(crate::pin::widenings(&before, &before).is_empty());
    std::fs::write(
        root.join("base.toml"),
        "[egress]\nallow = [\"api.anthropic.com\", \"evil.example\"]\n[agent]\nenv = { T = \"${GITHUB_TOKEN}\", Q = \"?Region\" }\n",
    )
    .unwrap();
    let after = pinned();
    let w = crate::pin::widenings(&before, &after);
    assert_eq!(
        w,
        [
            "egress.allow gains `evil.example`",
            "agent.env.Q = \"?Region\" is asked on the terminal",
            "agent.env.T = \"${GITHUB_TOKEN}\" is read from the host environment",
        ]
    );
    // Going back is a narrowing: silent.
    assert!(crate::pin::widenings(&after, &before).is_empty());
}

// ---------------------------------------------------------------------------
// env value forms

/// Answers prompts from a list, recording what was asked.
struct Answers {
    answers: Vec<&'static str>,
    asked: Vec<(String, String)>,
}

impl Prompter for Answers {
    fn ask(&mut self, var: &str, text: &str) -> Result<String, EnvError> {
        self.asked.push((var.into(), text.into()));
        Ok(self.answers.remove(0).to_owned())
    }
}

/// A prompter for a run without a terminal.
struct NoTerminal;

impl Prompter for NoTerminal {
    fn ask(&mut self, var: &str, _: &str) -> Result<String, EnvError> {
        Err(EnvError::NoTty { var: var.into() })
    }
}

fn fixed_host(vars: &[(&str, &str)]) -> crate::host::Host {
    crate::host::Host::fixed(
        "/nonexistent/state".into(),
        vec![],
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn env_value_forms_parse_and_show_as_written() {
    for (written, value) in [
        ("${HOST_VAR}", EnvValue::Host("HOST_VAR".into())),
        ("${_X1}", EnvValue::Host("_X1".into())),
        ("?Your region", EnvValue::Prompt("Your region".into())),
        ("?", EnvValue::Prompt(String::new())),
        ("??x", EnvValue::Literal("?x".into())),
        ("a $HOME b", EnvValue::Literal("a $HOME b".into())),
        ("${lower}", EnvValue::Literal("${lower}".into())),
        ("${A-B}", EnvValue::Literal("${A-B}".into())),
        ("x${A}", EnvValue::Literal("x${A}".into())),
        ("${A}x", EnvValue::Literal("${A}x".into())),
        ("", EnvValue::Literal(String::new())),
    ] {
        assert_eq!(EnvValue::parse(written), value, "{written}");
        assert_eq!(value.to_string(), written, "{value:?} shows as written");
    }
    let c = ok("[agent]\nenv = { A = \"${HOST_A}\", B = \"?B please\", C = \"??c\" }\n");
    assert_eq!(c.agent.env["A"], EnvValue::Host("HOST_A".into()));
    assert_eq!(c.agent.env["B"], EnvValue::Prompt("B please".into()));
    assert_eq!(c.agent.env["C"], EnvValue::Literal("?c".into()));
    // Reserved names stay refused whatever the form.
    for form in ["${X}", "?p", "v"] {
        let src = format!("[agent]\nenv = {{ HTTP_PROXY = \"{form}\" }}\n");
        one(&src, 2, 9, "agent.env.HTTP_PROXY", ErrorKind::InvalidValue);
        let src = format!("[agent]\nenv = {{ BOTTLE_X = \"{form}\" }}\n");
        one(&src, 2, 9, "agent.env.BOTTLE_X", ErrorKind::InvalidValue);
    }
}

#[test]
fn env_resolves_from_the_host_and_the_prompter() {
    let c = ok(
        "[agent]\nenv = { LIT = \"v\", FROM = \"${SECRET_SRC}\", ASKED = \"?Your region\", Q = \"??q\" }\n",
    );
    let host = fixed_host(&[("SECRET_SRC", "s3cr3t-value")]);
    let mut p = Answers {
        answers: vec!["eu-west"],
        asked: vec![],
    };
    let env = resolve_env(&c.agent, &host, &mut p).unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("ASKED".to_string(), "eu-west".to_string()),
            ("FROM".into(), "s3cr3t-value".into()),
            ("LIT".into(), "v".into()),
            ("Q".into(), "?q".into()),
        ])
    );
    assert_eq!(p.asked, [("ASKED".to_string(), "Your region".to_string())]);

    // Unset host variable: named, with the fix.
    let mut p = Answers {
        answers: vec!["eu-west"],
        asked: vec![],
    };
    let e = resolve_env(&c.agent, &fixed_host(&[]), &mut p).unwrap_err();
    assert!(
        matches!(&e, EnvError::HostUnset { var, host_var } if var == "FROM" && host_var == "SECRET_SRC")
    );
    let m = e.to_string();
    assert!(m.contains("the host variable SECRET_SRC is not set"), "{m}");
    assert!(m.contains("fix: export SECRET_SRC"), "{m}");

    // No terminal: named, with the fix.
    let e = resolve_env(&c.agent, &host, &mut NoTerminal).unwrap_err();
    let m = e.to_string();
    assert!(
        matches!(&e, EnvError::NoTty { var } if var == "ASKED"),
        "{m}"
    );
    assert!(
        m.contains("set it in the host environment and use \"${VAR}\""),
        "{m}"
    );
    // A usage error (exit 2).
    use crate::exit::Classify as _;
    assert_eq!(crate::up::UpError::from(e).exit(), crate::exit::Exit::Usage);
}

#[test]
fn the_plan_never_shows_a_resolved_value() {
    let c =
        ok("[agent]\nenv = { FROM = \"${SECRET_SRC}\", ASKED = \"?Region\", LIT = \"plain\" }\n");
    let host = fixed_host(&[("SECRET_SRC", "s3cr3t-value")]);
    let mut plan = crate::plan::build(
        &host,
        &c,
        "bottle.toml",
        None,
        bottle_runtimes::RuntimeKind::Docker,
        &crate::mounts::Grants::default(),
    )
    .unwrap();
    // Planned: literals only.
    assert_eq!(
        plan.agent.resolved_env.0,
        BTreeMap::from([("LIT".to_string(), "plain".to_string())])
    );
    let mut p = Answers {
        answers: vec!["typed-answer"],
        asked: vec![],
    };
    plan.agent.resolved_env =
        ResolvedEnv(resolve_env_values(&plan.agent.env, &host, &mut p).unwrap());
    assert_eq!(plan.agent.resolved_env.0["FROM"], "s3cr3t-value");
    let text = crate::plan::render(&plan);
    let json = serde_json::to_string(&plan).unwrap();
    let debug = format!("{plan:?}");
    let pin = serde_json::to_string(&crate::pin::Pinned::of(&plan)).unwrap();
    for (what, shown) in [
        ("text", &text),
        ("json", &json),
        ("debug", &debug),
        ("pin", &pin),
    ] {
        assert!(!shown.contains("s3cr3t-value"), "{what}: {shown}");
        assert!(!shown.contains("typed-answer"), "{what}: {shown}");
    }
    assert!(json.contains("\"FROM\":\"${SECRET_SRC}\""), "{json}");
    assert!(json.contains("\"ASKED\":\"?Region\""), "{json}");
    assert!(text.contains("env         FROM"), "{text}");
}

#[test]
fn upstream_proxy_is_typed_and_checked() {
    let c = ok(
        "[egress]\nupstream_proxy = \"http://proxy.corp.example:3128\"\nupstream_proxy_auth_env = \"CORP_PROXY_AUTH\"\n",
    );
    let p = c.egress_policy().upstream_proxy.unwrap();
    assert_eq!(p.url.to_string(), "http://proxy.corp.example:3128");
    assert_eq!(p.auth_from_env.as_deref(), Some("CORP_PROXY_AUTH"));
    assert!(ok("").egress_policy().upstream_proxy.is_none());

    let e = one(
        "[egress]\nupstream_proxy = \"https://p.example:443\"\n",
        2,
        18,
        "egress.upstream_proxy",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("not supported yet"), "{e}");
    let e = one(
        "[egress]\nupstream_proxy = \"http://p.example\"\n",
        2,
        18,
        "egress.upstream_proxy",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("port is required"), "{e}");
    let e = one(
        "[egress]\nupstream_proxy = \"http://u:pw@p.example:3128\"\n",
        2,
        18,
        "egress.upstream_proxy",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("upstream_proxy_auth_env"), "{e}");
    let all = errs("[egress]\nupstream_proxy_auth_env = \"CORP_PROXY_AUTH\"\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].message.contains("egress.upstream_proxy is not set"),
        "{}",
        all[0]
    );
}

#[test]
fn dlp_section_parses_to_policy_and_refuses_bad_names() {
    use bottle_policy::{Detector, DlpAction, Oversize};
    let c = ok(r#"
[dlp]
values_from_env = ["DB_PASSWORD", "DB_PASSWORD", "SIGNING_KEY"]
max_body = "8MiB"
oversize = "log"
inbound = true
action = { jwt = "redact", generic-secret-assignment = "block" }

[[dlp.host]]
host = "*.github.com"
action = { github-token = "ask" }
"#);
    let p = c.policy().unwrap().dlp;
    assert_eq!(p.values_from_env, ["DB_PASSWORD", "SIGNING_KEY"]);
    assert_eq!(p.max_body, 8 << 20);
    assert_eq!(p.oversize, Oversize::Log);
    assert!(p.inbound);
    assert_eq!(p.action_for(Detector::Jwt, "x.test"), DlpAction::Redact);
    assert_eq!(
        p.action_for(Detector::GithubToken, "api.github.com"),
        DlpAction::Ask
    );
    assert_eq!(
        p.action_for(Detector::BottleCredential, "x.test"),
        DlpAction::Block
    );
    // Absent: the defaults.
    assert_eq!(
        ok("").policy().unwrap().dlp,
        bottle_policy::DlpPolicy::default()
    );
    let e = one(
        "[dlp]\naction = { jwt = \"allow\" }\n",
        2,
        18,
        "dlp.action.jwt",
        ErrorKind::InvalidValue,
    );
    assert!(
        e.message
            .contains("write one of \"block\", \"redact\", \"ask\", \"log\""),
        "{e}"
    );
    let e = one(
        "[dlp]\naction = { jwtt = \"block\" }\n",
        2,
        12,
        "dlp.action.jwtt",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("not a DLP detector"), "{e}");
    one(
        "[dlp]\nmax_body = 0\n",
        2,
        12,
        "dlp.max_body",
        ErrorKind::InvalidValue,
    );
    one(
        "[dlp]\nvalues_from_env = [\"not a name\"]\n",
        2,
        20,
        "dlp.values_from_env[0]",
        ErrorKind::InvalidValue,
    );
    one(
        "[[dlp.host]]\naction = { jwt = \"log\" }\n",
        1,
        1,
        "dlp.host[0].host",
        ErrorKind::MissingKey,
    );
}

#[test]
fn egress_budget_loads_typed() {
    let c = ok(r#"
[egress]
allow = ["api.github.com", "api.anthropic.com"]
[egress.budget]
bytes_up = "2GiB"
bytes_down = 1000
llm_usd = 25
soft = 0.9
[[egress.budget.host]]
host = "api.github.com"
bytes_up = "50MiB"
requests_per_minute = 120
llm_usd = 5.0
[egress.budget.prices."claude-sonnet-4-5"]
input = 3.0
output = 15.0
cache_read = 0.30
cache_write = 3.75
[egress.budget.prices."gpt-4o*"]
input = 2.5
output = 10
"#);
    let b = &c.egress.budget;
    assert_eq!(b.bytes_up.unwrap().bytes(), 2 << 30);
    assert_eq!(b.bytes_down.unwrap().bytes(), 1000);
    assert_eq!(b.llm_usd.unwrap().usd().micros(), 25_000_000);
    assert_eq!(b.hosts[0].requests_per_minute.unwrap().get(), 120);
    assert_eq!(
        b.price_for("claude-sonnet-4-5").unwrap().cache_read,
        Some(bottle_policy::Usd::from_micros(300_000))
    );
    assert!(b.price_for("gpt-4o-mini").is_some());
    // It reaches the rendered policy, and an empty one is left out.
    let json = serde_json::to_value(c.policy().unwrap()).unwrap();
    assert_eq!(json["egress"]["budget"]["bytes_down"], 1000);
    let plain = serde_json::to_value(ok("").policy().unwrap()).unwrap();
    assert!(plain["egress"].get("budget").is_none());
}

#[test]
fn egress_budget_refusals_are_placed() {
    let e = one(
        "[egress.budget]\nbytes_up = \"5 parsecs\"\n",
        2,
        12,
        "egress.budget.bytes_up",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("not a size"), "{e}");
    let e = one(
        "[egress.budget]\nllm_usd = -3.0\n",
        2,
        11,
        "egress.budget.llm_usd",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("US dollars"), "{e}");
    let e = one(
        "[egress.budget]\nllm_usd = nan\n",
        2,
        11,
        "egress.budget.llm_usd",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("NaN"), "{e}");
    let e = one(
        "[egress.budget]\nsoft = 1.5\n",
        2,
        8,
        "egress.budget.soft",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("fraction"), "{e}");
    let e = one(
        "[[egress.budget.host]]\nhost = \"a.com\"\nrpm = 5\n",
        3,
        1,
        "egress.budget.host[0].rpm",
        ErrorKind::UnknownKey,
    );
    assert!(e.message.contains("requests_per_minute"), "{e}");
    let e = one(
        "[egress.budget.prices.\"claude x\"]\ninput = 1.0\noutput = 2.0\n",
        1,
        23,
        "egress.budget.prices.\"claude x\"",
        ErrorKind::InvalidValue,
    );
    assert!(e.message.contains("model name"), "{e}");
    let all = errs("[egress.budget.prices.m]\ninput = 1.0\n[[egress.budget.host]]\nhost = \"a.com\"\n[[egress.budget.host]]\nhost = \"a.com\"\nbytes_up = 0\n");
    let text: Vec<String> = all.iter().map(|e| e.to_string()).collect();
    assert_eq!(all.len(), 3, "{text:#?}");
    assert!(text.iter().any(|t| t.contains("`output`")), "{text:#?}");
    assert!(text.iter().any(|t| t.contains("already has")), "{text:#?}");
    assert!(text.iter().any(|t| t.contains("size of 0")), "{text:#?}");
}
