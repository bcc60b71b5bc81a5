//! Tests of loading `bottle.toml`: each class of error lands on the right
//! line, column and key; many errors come out together; the example config,
//! the defaults and the `bottle init` template load.

use super::*;
use bottle_policy::{HostPattern, Unknown, Verdict};

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
    assert_eq!(c.agent.env.get("EDITOR").map(String::as_str), Some("vi"));
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
        "unknown key `imgae`; did you mean `image`? ([agent] allows: image, command, workdir, mounts, env, cpus, memory, pids)"
    );
    let e = one("[agnet]\n", 1, 2, "agnet", ErrorKind::UnknownKey);
    assert!(e.message.contains("did you mean `agent`?"), "{e}");
    assert!(
        e.message
            .contains("the top level allows: name, runtime, agent, egress, git, supervise"),
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
