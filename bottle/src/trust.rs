//! How each toolchain in the agent trusts the bottle's CA, in one table that
//! `bottle up` (the variables and stores it sets), `bottle verify` (one trust
//! row per toolchain the agent has) and docs/config.md (the table a unit test
//! holds it to) all read.
//!
//! Every TLS connection from the agent is re-signed by the sidecar with the
//! bottle CA, so pointing a toolchain *only* at that CA is correct: nothing
//! else is ever presented to it. Three mechanisms, in the order tried:
//!
//! - a **variable** the tool documents ([`CA_ENV`]), set in the agent's
//!   environment by the plan;
//! - the **system store**: `update-ca-certificates` as root at `up`
//!   ([`ROOT_SCRIPT`]), which Debian's `ca-certificates-java` hook also
//!   copies into the JVM keystore; where that hook is missing, `keytool`
//!   imports the CA itself;
//! - the agent user's **NSS database** (`$HOME/.pki/nssdb`, read by Chrome
//!   and Firefox's tools) when `certutil` exists ([`USER_SCRIPT`]).

use crate::plan::AGENT_CA_DIR;

/// The bottle CA as the agent sees it.
pub fn ca_path() -> String {
    format!("{AGENT_CA_DIR}/bottle-ca.crt")
}

/// Variables toolchains document for their trust roots; each points at
/// [`ca_path`] in the agent. Why each one is here:
pub const CA_ENV: [&str; 8] = [
    // OpenSSL's default file: Python's ssl, Ruby (and RubyGems), Go's
    // crypto/x509 on Linux, .NET on Linux, uv (its documented override).
    "SSL_CERT_FILE",
    // Python requests (certifi otherwise).
    "REQUESTS_CA_BUNDLE",
    // Node and everything on it (npm, yarn, pnpm), and Bun.
    "NODE_EXTRA_CA_CERTS",
    // curl's bundle.
    "CURL_CA_BUNDLE",
    // git over https (libcurl, but git reads its own variable).
    "GIT_SSL_CAINFO",
    // pip (its vendored certifi otherwise).
    "PIP_CERT",
    // Deno.
    "DENO_CERT",
    // cargo (`http.cainfo` as a variable).
    "CARGO_HTTP_CAINFO",
];

/// The NSS nickname the CA gets in the agent user's database.
pub const NSS_NICKNAME: &str = "bottle-ca";

/// Runs as root in the agent at `up`: the system store, then the JVM
/// keystore when `keytool` exists and the system hook did not already fill
/// it. Prints one word per store it trusted the CA in. `$CA` is the CA path.
///
/// On the `update-ca-certificates` layout (Debian, Ubuntu, Alpine) an image
/// that never held a bottle CA gets, in a few milliseconds, what that tool
/// would add for this one certificate (it rebuilds every hash link and the
/// whole bundle, about 0.6 s): the CA appended to the bundle, and the
/// `bottle-ca.pem` link with its subject-hash link, named as that tool names them. The CA file stays
/// under `/usr/local/share/ca-certificates`, so a later run of the tool
/// keeps it. An image that did hold one (a snapshot of a bottle) runs the
/// tool itself, which drops the old CA with the rest of what is stale. The
/// tool's hooks (`/etc/ca-certificates/update.d`) do not run on the fast
/// path: the JVM's is done by `keytool` below; others are not.
/// `system` is printed only when the bundle and both links were made.
pub const ROOT_SCRIPT: &str = r#"
b=/etc/ssl/certs/ca-certificates.crt
l=/etc/ssl/certs/bottle-ca.pem
if command -v update-ca-certificates >/dev/null 2>&1 && [ -f "$b" ] && [ ! -e "$l" ] && [ ! -L "$l" ] && command -v openssl >/dev/null 2>&1 \
  && h=$(openssl x509 -hash -noout -in "$CA" 2>/dev/null) && [ -n "$h" ]; then
  if { [ -z "$(tail -c 1 "$b")" ] || echo; cat "$CA"; } >> "$b" && ln -s "$CA" "$l"; then
    i=0; while [ -e "/etc/ssl/certs/$h.$i" ] || [ -L "/etc/ssl/certs/$h.$i" ]; do i=$((i+1)); done
    ln -s bottle-ca.pem "/etc/ssl/certs/$h.$i" && echo system
  fi
elif command -v update-ca-certificates >/dev/null 2>&1 && update-ca-certificates >/dev/null 2>&1; then echo system; fi
if command -v keytool >/dev/null 2>&1; then
  if keytool -list -cacerts -storepass changeit 2>/dev/null | grep -qi bottle; then echo jvm
  elif keytool -importcert -noprompt -cacerts -storepass changeit -alias bottle-ca -file "$CA" >/dev/null 2>&1; then echo jvm
  else echo jvm-failed
  fi
fi
true
"#;

/// Runs as the agent user at `up`: its NSS database, when `certutil` exists.
/// Prints `nss` when the CA is in it, `nss-failed` when that failed.
pub const USER_SCRIPT: &str = r#"
command -v certutil >/dev/null 2>&1 || exit 0
d="$HOME/.pki/nssdb"
if mkdir -p "$d" \
  && { [ -f "$d/cert9.db" ] || certutil -N -d "sql:$d" --empty-password; } \
  && { while certutil -D -d "sql:$d" -n bottle-ca >/dev/null 2>&1; do :; done; certutil -A -d "sql:$d" -n bottle-ca -t C,, -i "$CA"; }
then echo nss; else echo nss-failed; fi
"#;

/// `script` with `CA` set to the bottle CA's path in the agent.
pub fn with_ca(script: &str) -> String {
    format!("CA='{}'\n{script}", ca_path())
}

/// One toolchain's trust of the bottle CA.
#[derive(Debug, Clone, Copy)]
pub struct Toolchain {
    pub name: &'static str,
    /// Shell test that succeeds when the toolchain is in the agent.
    pub detect: &'static str,
    /// How it trusts the CA (the docs' column).
    pub how: &'static str,
    /// The tool's own TLS client fetching `$URL`: exits 0 when the
    /// connection verified, whatever the HTTP status. None: the tool has no
    /// plain fetch a host outside a registry would answer.
    pub live: Option<&'static str>,
    /// Exits 0 when the tool's trust setting names the bottle CA (`$CA`).
    pub store: &'static str,
}

/// Every toolchain bottle sets trust up for.
pub const TOOLCHAINS: &[Toolchain] = &[
    Toolchain {
        name: "curl",
        detect: "command -v curl",
        how: "`CURL_CA_BUNDLE`, and the system store",
        live: Some(r#"curl -sS -o /dev/null --max-time 20 "$URL""#),
        store: r#"[ "$CURL_CA_BUNDLE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "wget",
        detect: "command -v wget",
        how: "the system store (`update-ca-certificates` at `up`)",
        // 8: the server answered with an error status; TLS verified.
        live: Some(
            r#"wget -q -O /dev/null --timeout=20 --tries=1 "$URL"; c=$?; [ $c = 0 ] || [ $c = 8 ]"#,
        ),
        store: r#"grep -qF "$(sed -n 2p "$CA")" /etc/ssl/certs/ca-certificates.crt"#,
    },
    Toolchain {
        name: "git",
        detect: "command -v git",
        how: "`GIT_SSL_CAINFO`",
        live: None,
        store: r#"[ "$GIT_SSL_CAINFO" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "python",
        detect: "command -v python3",
        how: "`SSL_CERT_FILE` (ssl's default context), and the system store",
        live: Some(
            r#"python3 -c 'import os, urllib.request, urllib.error
try: urllib.request.urlopen(os.environ["URL"], timeout=20)
except urllib.error.HTTPError: pass'"#,
        ),
        store: r#"python3 -c 'import ssl, sys; sys.exit(0 if any("bottle" in str(c.get("subject")) for c in ssl.create_default_context().get_ca_certs()) else 1)'"#,
    },
    Toolchain {
        name: "python requests",
        detect: "python3 -c 'import requests' 2>/dev/null",
        how: "`REQUESTS_CA_BUNDLE` (instead of certifi)",
        live: Some(r#"python3 -c 'import os, requests; requests.get(os.environ["URL"], timeout=20)'"#),
        store: r#"[ "$REQUESTS_CA_BUNDLE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "pip",
        detect: "python3 -m pip --version >/dev/null 2>&1",
        how: "`PIP_CERT` (instead of its vendored certifi)",
        live: None,
        store: r#"[ "$PIP_CERT" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "uv",
        detect: "command -v uv",
        how: "`SSL_CERT_FILE` (uv's documented override of its bundled roots)",
        live: None,
        store: r#"[ "$SSL_CERT_FILE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "node",
        detect: "command -v node",
        how: "`NODE_EXTRA_CA_CERTS`",
        live: Some(
            r#"node -e 'require("https").get(process.env.URL, r => process.exit(0)).on("error", e => { console.log(e.code || e.message); process.exit(1) })'"#,
        ),
        store: r#"[ "$NODE_EXTRA_CA_CERTS" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "npm",
        detect: "command -v npm",
        how: "`NODE_EXTRA_CA_CERTS` (npm's `cafile` unset)",
        live: None,
        store: r#"[ "$NODE_EXTRA_CA_CERTS" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "yarn",
        detect: "command -v yarn || command -v yarnpkg",
        how: "`NODE_EXTRA_CA_CERTS`",
        live: None,
        store: r#"[ "$NODE_EXTRA_CA_CERTS" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "pnpm",
        detect: "command -v pnpm",
        how: "`NODE_EXTRA_CA_CERTS`",
        live: None,
        store: r#"[ "$NODE_EXTRA_CA_CERTS" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "bun",
        detect: "command -v bun",
        how: "`NODE_EXTRA_CA_CERTS` (Bun reads it at start)",
        live: Some(r#"bun -e 'await fetch(process.env.URL)'"#),
        store: r#"[ "$NODE_EXTRA_CA_CERTS" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "deno",
        detect: "command -v deno",
        how: "`DENO_CERT`",
        live: Some(r#"deno eval 'await fetch(Deno.env.get("URL"))'"#),
        store: r#"[ "$DENO_CERT" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "cargo",
        detect: "command -v cargo",
        how: "`CARGO_HTTP_CAINFO` (`http.cainfo`), and the system store (libcurl's CA directory)",
        live: None,
        store: r#"[ "$CARGO_HTTP_CAINFO" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "go",
        detect: "command -v go",
        how: "`SSL_CERT_FILE` (crypto/x509 on Linux), and the system store",
        live: None,
        store: r#"[ "$SSL_CERT_FILE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "ruby",
        detect: "command -v ruby",
        how: "`SSL_CERT_FILE` (OpenSSL's default paths), and the system store",
        live: Some(
            r#"ruby -rnet/http -e 'u = URI(ENV["URL"]); Net::HTTP.start(u.host, u.port, use_ssl: true, open_timeout: 20, read_timeout: 20) { |h| h.head("/") }'"#,
        ),
        store: r#"[ "$SSL_CERT_FILE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "gem",
        detect: "command -v gem",
        how: "`SSL_CERT_FILE` (RubyGems uses OpenSSL's default paths)",
        live: None,
        store: r#"[ "$SSL_CERT_FILE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "jvm",
        detect: "command -v java",
        how: "the JVM's default keystore (`cacerts`): Debian's `ca-certificates-java` hook at `update-ca-certificates`, else `keytool -importcert` at `up` (Maven and Gradle use it)",
        live: None,
        store: r#"keytool -list -cacerts -storepass changeit 2>/dev/null | grep -qi bottle"#,
    },
    Toolchain {
        name: "dotnet",
        detect: "command -v dotnet",
        how: "`SSL_CERT_FILE` (.NET on Linux uses OpenSSL), and the system store",
        live: None,
        store: r#"[ "$SSL_CERT_FILE" = "$CA" ] && [ -r "$CA" ]"#,
    },
    Toolchain {
        name: "nss",
        detect: "command -v certutil",
        how: "the agent user's NSS database `$HOME/.pki/nssdb` (Chrome, Firefox tools), written with `certutil` at `up`",
        live: None,
        store: r#"certutil -L -d "sql:$HOME/.pki/nssdb" -n bottle-ca >/dev/null"#,
    },
];

/// One shell script printing the name of each toolchain in [`TOOLCHAINS`]
/// the agent has, one a line.
pub fn detect_script() -> String {
    TOOLCHAINS
        .iter()
        .map(|t| {
            format!(
                "if {{ {}; }} >/dev/null 2>&1; then echo '{}'; fi\n",
                t.detect, t.name
            )
        })
        .collect()
}

/// The toolchains named in `detected` (the output of [`detect_script`]), in
/// table order; names not in the table are ignored.
pub fn present(detected: &str) -> Vec<&'static Toolchain> {
    let names: Vec<&str> = detected.lines().map(str::trim).collect();
    TOOLCHAINS
        .iter()
        .filter(|t| names.contains(&t.name))
        .collect()
}

/// The script a trust check runs for `t`: the tool's own fetch of
/// `https://{host}/` when `host` (an allowed host) is given and the tool has
/// one, otherwise its trust setting. Returns the script and whether it is
/// the live fetch.
pub fn check_script(t: &Toolchain, host: Option<&str>) -> (String, bool) {
    match (t.live, host) {
        (Some(live), Some(h)) => (
            format!("CA='{}'\nexport URL='https://{h}/'\n{live} 2>&1", ca_path()),
            true,
        ),
        _ => (format!("{} 2>&1", with_ca(t.store)), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe_in_single_quotes() {
        let mut names: Vec<&str> = TOOLCHAINS.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TOOLCHAINS.len());
        assert!(names.iter().all(|n| !n.contains('\'')));
    }

    #[test]
    fn present_keeps_table_order_and_ignores_strangers() {
        let got: Vec<&str> = present("npm\ncurl\nnot-a-tool\n nss \n")
            .iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(got, ["curl", "npm", "nss"]);
        assert!(present("").is_empty());
    }

    #[test]
    fn detect_script_names_every_toolchain() {
        let s = detect_script();
        for t in TOOLCHAINS {
            assert!(s.contains(&format!("echo '{}'", t.name)), "{}", t.name);
        }
    }

    #[test]
    fn a_live_fetch_only_with_an_allowed_host() {
        let curl = &TOOLCHAINS[0];
        let (s, live) = check_script(curl, Some("example.org"));
        assert!(live);
        assert!(s.contains("export URL='https://example.org/'"), "{s}");
        let (s, live) = check_script(curl, None);
        assert!(!live);
        assert!(s.contains(&format!("CA='{}'", ca_path())), "{s}");
        assert!(s.contains("CURL_CA_BUNDLE"), "{s}");
        let git = TOOLCHAINS.iter().find(|t| t.name == "git").unwrap();
        assert!(!check_script(git, Some("example.org")).1);
    }

    /// Every variable a toolchain's row names is one the plan sets.
    #[test]
    fn every_variable_named_is_set() {
        for t in TOOLCHAINS {
            for var in t.store.split('$').skip(1) {
                let var: String = var
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if var.is_empty() || var == "CA" || var == "HOME" || var == "URL" {
                    continue;
                }
                assert!(CA_ENV.contains(&var.as_str()), "{}: {var}", t.name);
            }
        }
    }

    /// docs/config.md's toolchain table lists every toolchain.
    #[test]
    fn docs_list_every_toolchain() {
        let docs = include_str!("../../docs/config.md");
        for t in TOOLCHAINS {
            assert!(
                docs.contains(&format!("| {} |", t.name)),
                "docs/config.md has no row for {}",
                t.name
            );
        }
        for v in CA_ENV {
            assert!(docs.contains(v), "docs/config.md does not name {v}");
        }
    }
}
