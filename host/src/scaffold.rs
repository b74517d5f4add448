//! `effe-host new`: a new effe crate, ready to test, build and serve. The files are templates
//! (`host/templates/new/`) with the name put in; effe-abi, which is not on crates.io, comes as
//! a copy of the sources this host was built with (embedded by `build.rs`), a path, or a git
//! repository.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::NewArgs;
use crate::error::Fatal;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/effe_abi_files.rs"));
}

const CARGO_TOML: &str = include_str!("../templates/new/Cargo.toml.in");
const LIB_RS: &str = include_str!("../templates/new/lib.rs.in");
const README: &str = include_str!("../templates/new/README.md.in");
const GITIGNORE: &str = include_str!("../templates/new/gitignore.in");

/// Where the new crate's effe-abi dependency comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiSource {
    /// A copy of the effe-abi this host was built with, in `NAME/effe-abi`.
    Vendor,
    /// An effe-abi crate on this machine (made absolute, so the crate can be moved).
    Path(PathBuf),
    /// A git repository holding effe-abi, at a revision (a commit, tag or branch) if given.
    Git { url: String, rev: Option<String> },
}

impl AbiSource {
    const EXPECTED: &str = "expected vendor, path:DIR or git:URL[#REV]";

    /// `vendor`, `path:DIR` or `git:URL[#REV]`.
    pub fn parse(s: &str) -> Result<AbiSource, String> {
        if s == "vendor" {
            Ok(AbiSource::Vendor)
        } else if let Some(dir) = s.strip_prefix("path:").filter(|d| !d.is_empty()) {
            Ok(AbiSource::Path(PathBuf::from(dir)))
        } else if let Some(repo) = s.strip_prefix("git:").filter(|r| !r.is_empty()) {
            let (url, rev) = match repo.split_once('#') {
                Some((url, rev)) if !url.is_empty() && !rev.is_empty() => {
                    (url, Some(rev.to_owned()))
                }
                Some(_) => return Err(Self::EXPECTED.to_owned()),
                None => (repo, None),
            };
            Ok(AbiSource::Git {
                url: url.to_owned(),
                rev,
            })
        } else {
            Err(Self::EXPECTED.to_owned())
        }
    }
}

impl fmt::Display for AbiSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbiSource::Vendor => write!(f, "vendor"),
            AbiSource::Path(dir) => write!(f, "path:{}", dir.display()),
            AbiSource::Git { url, rev: None } => write!(f, "git:{url}"),
            AbiSource::Git {
                url,
                rev: Some(rev),
            } => write!(f, "git:{url}#{rev}"),
        }
    }
}

/// Words a package cannot be named (cargo refuses them too): Rust's keywords, whose library
/// name could not be written in Rust code, and the crates every build already has.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Whether `name` can name the crate: ASCII letters, digits, `-`, `_`, starting with a
/// letter, not a keyword, and not effe-abi itself (the crate depends on it). The error says why.
pub fn check_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "a crate needs a name".to_owned()
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "a crate name starts with an ASCII letter".to_owned()
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        format!(
            "{:?} cannot be in a crate name: use ASCII letters, digits, - and _",
            c
        )
    } else if name.len() > 64 {
        "a crate name has at most 64 characters".to_owned()
    } else if RESERVED.contains(&name.replace('-', "_").as_str()) {
        "it is a Rust keyword or a standard crate's name".to_owned()
    } else if name.replace('-', "_") == "effe_abi" {
        "the crate depends on effe-abi: choose another name".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("invalid effe name {name:?}: {why}"))
}

/// One file of the new crate.
struct File {
    path: PathBuf,
    contents: Vec<u8>,
}

/// The files of crate `name` with effe-abi from `source` (already resolved: a path is
/// absolute).
fn files(name: &str, source: &AbiSource) -> Vec<File> {
    let lib = name.replace('-', "_");
    let (dependency, readme) = match source {
        AbiSource::Vendor => (
            format!(
                "# effe-abi is not on crates.io: effe-abi/ is a copy of effe-abi {abi}, the one the\n\
                 # effe-host that made this crate was built with.\n\
                 effe-abi = {{ path = \"effe-abi\" }}",
                abi = vendored_version(),
            ),
            format!(
                "`effe-abi/` is a copy of effe-abi {abi}, the version of the effe-host that made \
                 this crate\n(`effe-host new`), so that the crate builds anywhere with no \
                 registry (effe-abi is not on\ncrates.io). An effe built against it loads in \
                 that host and in any later 0.1 host. To follow\nan effe-abi checkout instead, \
                 write `effe-abi = {{ path = \"/path/to/effe/effe-abi\" }}` in\n`Cargo.toml` \
                 (or `{{ git = \"URL\", rev = \"REV\" }}`), and delete `effe-abi/`.",
                abi = vendored_version(),
            ),
        ),
        AbiSource::Path(dir) => (
            format!("effe-abi = {{ path = {} }}", toml_string(&dir.to_string_lossy())),
            format!(
                "effe-abi comes from `{}` (`effe-host new --effe-abi path:DIR`).",
                dir.display()
            ),
        ),
        AbiSource::Git { url, rev } => {
            let rev_key = rev
                .as_deref()
                .map(|rev| format!(", rev = {}", toml_string(rev)))
                .unwrap_or_default();
            (
                format!("effe-abi = {{ git = {}{rev_key} }}", toml_string(url)),
                format!(
                    "effe-abi comes from the git repository {url}{} (`effe-host new --effe-abi \
                     git:URL#REV`);\n`Cargo.lock` records the commit.",
                    rev.as_deref()
                        .map(|rev| format!(" at {rev}"))
                        .unwrap_or_default()
                ),
            )
        }
    };
    // The copy sits inside this crate's directory, where cargo would make it a member of the
    // crate's workspace (and so `cargo test --workspace` would test it): it is a dependency.
    let workspace = match source {
        AbiSource::Vendor => "exclude = [\"effe-abi\"]\n",
        _ => "",
    };
    let fill = |template: &str| {
        template
            .replace("{{effe_abi}}", &dependency)
            .replace("{{workspace}}\n", workspace)
            .replace("{{effe_abi_readme}}", &readme)
            .replace("{{lib}}", &lib)
            .replace("{{name}}", name)
            .into_bytes()
    };
    let mut made = vec![
        File {
            path: "Cargo.toml".into(),
            contents: fill(CARGO_TOML),
        },
        File {
            path: "src/lib.rs".into(),
            contents: fill(LIB_RS),
        },
        File {
            path: "README.md".into(),
            contents: fill(README),
        },
        File {
            path: ".gitignore".into(),
            contents: fill(GITIGNORE),
        },
    ];
    if *source == AbiSource::Vendor {
        made.extend(vendored_effe_abi());
    }
    made
}

/// The embedded effe-abi, as files under `effe-abi/`. Its tests' dependencies are dropped:
/// a dependency's tests are never built, and they would only make cargo resolve more crates.
fn vendored_effe_abi() -> impl Iterator<Item = File> {
    embedded::EFFE_ABI_FILES.iter().map(|(path, contents)| {
        let contents = if *path == "Cargo.toml" {
            without_table(&String::from_utf8_lossy(contents), "dev-dependencies").into_bytes()
        } else {
            contents.to_vec()
        };
        File {
            path: Path::new("effe-abi").join(path),
            contents,
        }
    })
}

/// `toml` without its `[table]` (up to the next table header). Comments just above the header
/// belong to it and go too.
fn without_table(toml: &str, table: &str) -> String {
    let header = format!("[{table}]");
    let mut kept: Vec<&str> = Vec::new();
    let mut inside = false;
    for line in toml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == header;
            if inside {
                while kept.last().is_some_and(|l| l.trim_start().starts_with('#')) {
                    kept.pop();
                }
            }
        }
        if !inside {
            kept.push(line);
        }
    }
    let mut out = kept.join("\n");
    out.push('\n');
    out
}

/// The vendored effe-abi's version, read from its Cargo.toml.
fn vendored_version() -> &'static str {
    let manifest = embedded::EFFE_ABI_FILES
        .iter()
        .find(|(path, _)| *path == "Cargo.toml")
        .map(|(_, contents)| std::str::from_utf8(contents).unwrap_or_default())
        .unwrap_or_default();
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \"")?.strip_suffix('"'))
        .unwrap_or("(unknown version)")
}

/// A TOML basic string: JSON's string escapes are a subset of TOML's.
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `effe-host new`: makes the crate and says what it made and what to run next.
pub fn new(args: &NewArgs) -> Result<(), Fatal> {
    check_name(&args.name).map_err(Fatal::Usage)?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let source = match &args.effe_abi {
        AbiSource::Path(given) => AbiSource::Path(effe_abi_at(given)?),
        AbiSource::Vendor if embedded::EFFE_ABI_FILES.is_empty() => {
            return Err(Fatal::Usage(
                "this effe-host carries no copy of effe-abi (it was built without the \
                 vendor-effe-abi feature, as the container image's is): pass --effe-abi \
                 path:DIR or git:URL, or use the effe-host of a checkout"
                    .to_owned(),
            ))
        }
        other => other.clone(),
    };
    refuse_non_empty(&dir)?;
    let made = files(&args.name, &source);
    for file in &made {
        write(&dir, file)?;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(summary(&args.name, &dir, &source).as_bytes());
    Ok(())
}

/// The crate `given` names must be effe-abi: a typo would otherwise surface only at the
/// first build, in the new crate.
fn effe_abi_at(given: &Path) -> Result<PathBuf, Fatal> {
    let refuse = |why: String| {
        Fatal::Usage(format!(
            "--effe-abi path:{}: {why}",
            given.display().to_string().escape_debug()
        ))
    };
    let dir = given
        .canonicalize()
        .map_err(|e| refuse(format!("cannot open it: {e}")))?;
    let manifest = fs::read_to_string(dir.join("Cargo.toml"))
        .map_err(|e| refuse(format!("cannot read its Cargo.toml: {e}")))?;
    let is_effe_abi = manifest
        .lines()
        .any(|l| l.split_whitespace().collect::<String>() == "name=\"effe-abi\"");
    if !is_effe_abi {
        return Err(refuse(
            "its Cargo.toml is not effe-abi's (expected the effe-abi/ directory of an \
             effe-host checkout)"
                .to_owned(),
        ));
    }
    if dir.to_str().is_none() {
        return Err(refuse("the path is not UTF-8".to_owned()));
    }
    Ok(dir)
}

/// A directory that exists must be empty: nothing of the author's is overwritten.
fn refuse_non_empty(dir: &Path) -> Result<(), Fatal> {
    let shown = dir.display().to_string();
    let shown = shown.escape_debug();
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Fatal::Usage(format!(
                "cannot make an effe in {shown}: the directory is not empty"
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(Fatal::Usage(format!(
            "cannot make an effe in {shown}: it is a file"
        ))),
        Err(e) => Err(Fatal::Usage(format!("cannot make an effe in {shown}: {e}"))),
    }
}

fn write(dir: &Path, file: &File) -> Result<(), Fatal> {
    let path = dir.join(&file.path);
    let fail = |e: std::io::Error| Fatal::Runtime(format!("cannot write {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    fs::write(&path, &file.contents).map_err(fail)
}

/// What was made and the commands that come next.
fn summary(name: &str, dir: &Path, source: &AbiSource) -> String {
    let lib = name.replace('-', "_");
    let abi = match source {
        AbiSource::Vendor => format!(
            "effe-abi/     a copy of effe-abi {}, the one this effe-host was built with",
            vendored_version()
        ),
        other => format!("(effe-abi from {other})"),
    };
    let host = std::env::current_exe()
        .ok()
        .map(|exe| exe.display().to_string())
        .unwrap_or_else(|| "effe-host".to_owned());
    let cd = dir.display();
    format!(
        "Made the effe {name} in {cd}:\n\
         \x20 Cargo.toml    a cdylib, panic = \"unwind\"\n\
         \x20 src/lib.rs    a small effe and its unit test\n\
         \x20 README.md     how to test, build, run, check and ship it\n\
         \x20 .gitignore\n\
         \x20 {abi}\n\
         Next:\n\
         \x20 cd {cd}\n\
         \x20 cargo test\n\
         \x20 cargo build --release\n\
         \x20 {host} --plugin target/release/lib{lib}.so --listen 127.0.0.1:8080\n\
         \x20 curl 'http://127.0.0.1:8080/?name=you'\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(files: &'a [File], path: &str) -> &'a str {
        let file = files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("no {path}"));
        std::str::from_utf8(&file.contents).unwrap()
    }

    #[test]
    fn names_are_crate_names() {
        for good in ["greet", "my-effe", "todo_api", "a1", "Upper"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "needs a name"),
            ("1st", "starts with an ASCII letter"),
            ("-x", "starts with an ASCII letter"),
            ("_x", "starts with an ASCII letter"),
            ("a b", "' ' cannot be in a crate name"),
            ("a/b", "'/' cannot be in a crate name"),
            ("café", "'é' cannot be in a crate name"),
            ("fn", "Rust keyword"),
            ("std", "standard crate"),
            ("proc-macro", "standard crate"),
            ("effe-abi", "depends on effe-abi"),
            ("effe_abi", "depends on effe-abi"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
        assert_eq!(
            check_name("a\nb").unwrap_err(),
            "invalid effe name \"a\\nb\": '\\n' cannot be in a crate name: use ASCII letters, \
             digits, - and _"
        );
    }

    #[test]
    fn abi_sources_parse() {
        assert_eq!(AbiSource::parse("vendor"), Ok(AbiSource::Vendor));
        assert_eq!(
            AbiSource::parse("path:../effe/effe-abi"),
            Ok(AbiSource::Path("../effe/effe-abi".into()))
        );
        assert_eq!(
            AbiSource::parse("git:https://example.com/effe.git#v0.1.2"),
            Ok(AbiSource::Git {
                url: "https://example.com/effe.git".into(),
                rev: Some("v0.1.2".into())
            })
        );
        assert_eq!(
            AbiSource::parse("git:ssh://git@example.com/effe"),
            Ok(AbiSource::Git {
                url: "ssh://git@example.com/effe".into(),
                rev: None
            })
        );
        for bad in [
            "",
            "vendored",
            "path:",
            "git:",
            "git:#abc",
            "git:url#",
            "crates.io",
        ] {
            assert!(AbiSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_crate_builds_against_the_vendored_copy_standalone() {
        let made = files("my-effe", &AbiSource::Vendor);
        let cargo = file(&made, "Cargo.toml");
        assert!(cargo.contains("name = \"my-effe\""), "{cargo}");
        assert!(cargo.contains("crate-type = [\"cdylib\"]"));
        assert!(cargo.contains("effe-abi = { path = \"effe-abi\" }"));
        assert!(
            cargo.contains("[workspace]\nexclude = [\"effe-abi\"]\n\n#"),
            "{cargo}"
        );
        assert_eq!(cargo.matches("panic = \"unwind\"").count(), 2);
        assert!(!cargo.contains("{{"), "{cargo}");
        let lib = file(&made, "src/lib.rs");
        assert!(lib.contains("#![forbid(unsafe_code)]") && lib.contains("export_effe!"));
        assert!(lib.contains("libmy_effe.so"));
        let readme = file(&made, "README.md");
        assert!(readme.contains("make image EFFE_SO=/path/to/my-effe/target/release/libmy_effe.so"));
        assert!(!readme.contains("{{"), "{readme}");
        assert_eq!(file(&made, ".gitignore"), "/target\n");

        // Every file of effe-abi, as this host was built with it, and its own manifest minus
        // what only its tests need.
        for (path, contents) in embedded::EFFE_ABI_FILES {
            let copy = file(&made, &format!("effe-abi/{path}"));
            if *path != "Cargo.toml" {
                assert_eq!(copy.as_bytes(), *contents, "{path}");
            }
        }
        assert!(
            file(&made, "effe-abi/src/lib.rs").contains("macro_rules! export_effe")
                || file(&made, "effe-abi/src/export.rs").contains("macro_rules! export_effe")
        );
        let manifest = file(&made, "effe-abi/Cargo.toml");
        assert!(manifest.contains("name = \"effe-abi\""));
        assert!(manifest.contains("[dependencies]"));
        assert!(!manifest.contains("[dev-dependencies]"), "{manifest}");
        assert!(!manifest.contains("proptest"), "{manifest}");
        assert!(!manifest.contains(".workspace = true"), "{manifest}");
        assert_eq!(vendored_version(), effe_abi::abi::ABI_VERSION);
    }

    #[test]
    fn path_and_git_sources_are_written_as_cargo_reads_them() {
        let made = files("x", &AbiSource::Path("/opt/effe/effe-abi".into()));
        let cargo = file(&made, "Cargo.toml");
        assert!(
            cargo.contains("effe-abi = { path = \"/opt/effe/effe-abi\" }"),
            "{cargo}"
        );
        assert!(cargo.contains("[workspace]\n\n#"), "{cargo}");
        assert!(!made.iter().any(|f| f.path.starts_with("effe-abi")));

        let git = AbiSource::Git {
            url: "https://example.com/effe.git".into(),
            rev: Some("v0.1.2".into()),
        };
        let made = files("x", &git);
        let cargo = file(&made, "Cargo.toml");
        assert!(
            cargo.contains(
                "effe-abi = { git = \"https://example.com/effe.git\", rev = \"v0.1.2\" }"
            ),
            "{cargo}"
        );
        let odd = AbiSource::Git {
            url: "https://example.com/a\"b\\c".into(),
            rev: None,
        };
        let made = files("x", &odd);
        assert!(file(&made, "Cargo.toml")
            .contains(r#"effe-abi = { git = "https://example.com/a\"b\\c" }"#));
    }

    #[test]
    fn dropping_a_table_keeps_the_others() {
        let toml = "[package]\nname = \"a\"\n\n[dependencies]\nx = \"1\"\n\n# For tests.\n\
                    [dev-dependencies]\nproptest = \"1\"\n\n[lints.rust]\nunsafe_code = \"deny\"\n";
        assert_eq!(
            without_table(toml, "dev-dependencies"),
            "[package]\nname = \"a\"\n\n[dependencies]\nx = \"1\"\n\n[lints.rust]\n\
             unsafe_code = \"deny\"\n"
        );
    }
}
