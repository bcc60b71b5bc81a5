//! The example `bottle.toml`s people copy from: every ```` ```toml ```` block in
//! the README and in `docs/`, every file in `examples/`, and the commented
//! `allow` line of the `bottle init` template load with the real config loader
//! (`bottle::config`), and the README shows exactly `examples/bottle.toml`.
//!
//! Example allow entries name model or forge API hosts, or names under the
//! reserved `.example` / `.test` domains, never a package registry: a user
//! who pastes an example must not open a path for code to walk in through.

use bottle::config::{self, Config, INIT_TEMPLATE};
use bottle_policy::{AllowRule, HostPattern};
use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `bottle/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bottle/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The ```` ```toml ```` blocks of a Markdown file, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.as_mut() {
            None if line.trim_start() == "```toml" => open = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(open.take());
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a ```toml block is never closed");
    blocks
}

/// Loads `src` as if it were `bottle.toml` in the directory of `rel`, the
/// way `bottle up -f` would; panics with every error the loader reports.
fn load(src: &str, rel: &str, line: usize) -> Config {
    let dir = repo().join(rel).parent().unwrap().to_path_buf();
    config::parse(src, &dir.join("bottle.toml"))
        .unwrap_or_else(|e| panic!("{rel}:{line}: the ```toml block does not load:\n{e}"))
}

/// Model and forge API hosts an example may allow; anything else must sit
/// under a reserved name (RFC 2606, RFC 6761).
const EXAMPLE_HOSTS: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "api.github.com",
    "githubusercontent.com",
];
const RESERVED: &[&str] = &["example", "test", "invalid", "localhost"];

fn assert_example_host(entry: &AllowRule, place: &str) {
    let name = match &entry.host {
        HostPattern::Exact(n) | HostPattern::Suffix(n) => n.as_str(),
        HostPattern::Ip(_) => return,
    };
    let reserved = RESERVED
        .iter()
        .any(|tld| name == *tld || name.ends_with(&format!(".{tld}")));
    assert!(
        reserved || EXAMPLE_HOSTS.contains(&name),
        "{place}: example allow entry `{entry}` is neither a model/forge API host \
         ({EXAMPLE_HOSTS:?}) nor under a reserved name (.example, .test); \
         use one of those in examples"
    );
}

fn assert_example_hosts(c: &Config, place: &str) {
    let policy = c.egress_policy();
    for entry in &policy.allow {
        assert_example_host(entry, place);
    }
}

#[test]
fn every_toml_block_in_the_readme_and_docs_loads() {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut loaded = 0;
    for rel in &files {
        for (line, block) in toml_blocks(&read(rel)) {
            let c = load(&block, rel, line);
            assert_example_hosts(&c, &format!("{rel}:{line}"));
            loaded += 1;
        }
    }
    // The README's and docs/config.md's examples at least; a parser that
    // found no block must not pass.
    assert!(
        loaded >= 2,
        "found only {loaded} ```toml blocks in {files:?}"
    );
}

#[test]
fn the_readme_shows_examples_bottle_toml() {
    let readme = read("README.md");
    let example = read("examples/bottle.toml");
    let blocks = toml_blocks(&readme);
    assert!(
        blocks.iter().any(|(_, b)| *b == example),
        "README.md's configuration block differs from examples/bottle.toml; \
         keep them identical (copy the file into the README)"
    );
}

#[test]
fn docs_config_md_has_a_complete_example_that_loads() {
    let blocks = toml_blocks(&read("docs/config.md"));
    let (line, block) = blocks
        .first()
        .expect("docs/config.md has a complete ```toml example");
    let c = load(block, "docs/config.md", *line);
    // "Complete": the keys that have no default in the other examples are set.
    assert_eq!(
        c.agent.pids,
        Some(1024),
        "docs/config.md:{line}: [agent] pids"
    );
    assert_eq!(c.sidecar_limits().max_connections, 512);
    assert!(!c.upstream_roots.is_empty(), "egress.upstream_roots");
    assert!(!c.egress_policy().allow_private.is_empty(), "allow_private");
    assert_eq!(c.egress_policy().credentials.len(), 2);
    assert_eq!(c.git.remotes.len(), 1);
}

#[test]
fn every_file_in_examples_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let c = config::load(&path)
            .unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()));
        assert_example_hosts(&c, &path.display().to_string());
        n += 1;
    }
    assert!(
        n >= 2,
        "examples/ holds bottle.toml and demo.toml; found {n}"
    );
}

#[test]
fn the_init_template_suggests_example_hosts_only() {
    // The template's own `allow` is empty; the commented line above it is
    // what a user uncomments.
    let line = INIT_TEMPLATE
        .lines()
        .find_map(|l| l.strip_prefix("# allow = "))
        .expect("the template shows a commented `allow = [...]` example");
    let c = config::parse(
        &format!("[egress]\nallow = {line}\n"),
        Path::new("/init/bottle.toml"),
    )
    .unwrap_or_else(|e| panic!("the template's commented allow line does not load:\n{e}"));
    assert!(!c.egress_policy().allow.is_empty());
    assert_example_hosts(&c, "bottle init template");
}

#[test]
fn the_host_check_refuses_a_non_example_host() {
    // The check above must be able to fail.
    let c = config::parse(
        "[egress]\nallow = [\"downloads.elsewhere.org\"]\n",
        Path::new("/x/bottle.toml"),
    )
    .unwrap();
    let entry = &c.egress_policy().allow[0];
    let caught = std::panic::catch_unwind(|| assert_example_host(entry, "probe"));
    assert!(caught.is_err());
    let ok = AllowRule::parse("*.cdn.example:443").unwrap();
    assert_example_host(&ok, "probe");
}
