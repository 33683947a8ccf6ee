//! `data/loaded_plugins`, EMQX style: `{name, true}.`, `{name, false}.` or `name.`, one a
//! line, a `%` comment after it allowed (as Erlang's `file:consult`, which EMQX reads it with,
//! allows); blank lines and comments are kept on rewrite; a bad line is reported with its
//! number and kept as it is. A rewrite goes to the file a symbolic link names, with the
//! file's permissions.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Whether `name` is a valid plugin name: `[a-z0-9_]+`. Names are never paths.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A line that is not a valid entry, comment or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}: {text:?}")]
pub(crate) struct LineError {
    pub(crate) line: usize,
    pub(crate) problem: &'static str,
    pub(crate) text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// `line` is the 1-based line number in the file as read (0 for an appended entry);
    /// `comment` what followed the entry on its line (spaces, then a `%` comment), kept.
    Entry { name: String, enabled: bool, line: usize, comment: String },
    /// A comment, a blank line, or a line that did not parse: kept verbatim.
    Verbatim(String),
}

/// The parsed file: its lines in order, ready to be edited and written back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoadedPlugins {
    lines: Vec<Line>,
}

fn parse_entry(text: &str) -> Result<(String, bool), &'static str> {
    let body = text.strip_suffix('.').ok_or("missing the final '.'")?.trim_end();
    let (name, enabled) = match body.strip_prefix('{') {
        Some(inner) => {
            let inner = inner.strip_suffix('}').ok_or("missing '}'")?;
            let (name, flag) = inner.split_once(',').ok_or("expected {name, true|false}")?;
            let enabled = match flag.trim() {
                "true" => true,
                "false" => false,
                _ => return Err("the flag must be true or false"),
            };
            (name.trim(), enabled)
        }
        None => (body, true),
    };
    if !is_valid_name(name) {
        return Err("a plugin name is [a-z0-9_]+ (never a path)");
    }
    Ok((name.to_owned(), enabled))
}

impl LoadedPlugins {
    /// Parses the file's text. Every line that is neither an entry, a comment nor blank is an
    /// error in the second value and is kept verbatim; a name listed twice is reported and the
    /// first listing wins.
    pub(crate) fn parse(text: &str) -> (LoadedPlugins, Vec<LineError>) {
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let text = raw.trim();
            if text.is_empty() || text.starts_with('%') {
                lines.push(Line::Verbatim(raw.to_owned()));
                continue;
            }
            // A comment after the entry (names and entries have no `%`).
            let (entry, comment) = match raw.find('%') {
                Some(at) => (raw[..at].trim(), raw[at..].to_owned()),
                None => (text, String::new()),
            };
            match parse_entry(entry) {
                Ok((name, _)) if !seen.insert(name.clone()) => {
                    errors.push(LineError { line: i + 1, problem: "duplicate entry, ignored", text: raw.to_owned() });
                    lines.push(Line::Verbatim(raw.to_owned()));
                }
                Ok((name, enabled)) => lines.push(Line::Entry { name, enabled, line: i + 1, comment }),
                Err(problem) => {
                    errors.push(LineError { line: i + 1, problem, text: raw.to_owned() });
                    lines.push(Line::Verbatim(raw.to_owned()));
                }
            }
        }
        (LoadedPlugins { lines }, errors)
    }

    /// Reads and parses `path`; a missing file is an empty list.
    pub(crate) fn read(path: &Path) -> io::Result<(LoadedPlugins, Vec<LineError>)> {
        match fs::read(path) {
            Ok(bytes) => Ok(LoadedPlugins::parse(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e),
        }
    }

    /// Every entry, in file order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, bool)> {
        self.numbered_entries().map(|(_, name, enabled)| (name, enabled))
    }

    /// Every entry with its line number, in file order.
    pub(crate) fn numbered_entries(&self) -> impl Iterator<Item = (usize, &str, bool)> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry { name, enabled, line, .. } => Some((*line, name.as_str(), *enabled)),
            Line::Verbatim(_) => None,
        })
    }

    /// Sets `name`'s flag, appending an entry if it is not listed.
    pub(crate) fn set(&mut self, name: &str, enabled: bool) {
        for line in &mut self.lines {
            if let Line::Entry { name: n, enabled: e, .. } = line {
                if n == name {
                    *e = enabled;
                    return;
                }
            }
        }
        self.lines.push(Line::Entry { name: name.to_owned(), enabled, line: 0, comment: String::new() });
    }

    /// The file's text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Entry { name, enabled, comment, .. } if comment.is_empty() => {
                    out.push_str(&format!("{{{name}, {enabled}}}."))
                }
                Line::Entry { name, enabled, comment, .. } => {
                    out.push_str(&format!("{{{name}, {enabled}}}. {comment}"))
                }
                Line::Verbatim(text) => out.push_str(text),
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file beside it, fsync, rename, fsync of the
    /// directory. A crash leaves either the old or the new file. Through a symbolic link, the
    /// file it names is the one replaced (the link stays); the new file has the old one's
    /// permissions.
    pub(crate) fn write(&self, path: &Path) -> io::Result<()> {
        let target = match fs::canonicalize(path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
            Err(e) => return Err(e),
        };
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new().prefix(".loaded_plugins.").tempfile_in(dir)?;
        tmp.write_all(self.render().as_bytes())?;
        if let Ok(old) = fs::metadata(&target) {
            tmp.as_file().set_permissions(old.permissions())?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&target).map_err(|e| e.error)?;
        fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_emqx_forms_and_keeps_comments() {
        let text = "% default plugins\n{emqx_telemetry, true}.\r\n\n{emqx_retainer,false}.  \nemqx_mod_presence.\n";
        let (file, errors) = LoadedPlugins::parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        let entries: Vec<_> = file.entries().collect();
        assert_eq!(entries, vec![("emqx_telemetry", true), ("emqx_retainer", false), ("emqx_mod_presence", true)]);
        assert_eq!(
            file.render(),
            "% default plugins\n{emqx_telemetry, true}.\n\n{emqx_retainer, false}.\n{emqx_mod_presence, true}.\n"
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_kept() {
        let text = "{ok, true}.\n{../etc/passwd, true}.\n{x, maybe}.\n{ok, false}.\n{trunc";
        let (file, errors) = LoadedPlugins::parse(text);
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert_eq!(file.entries().collect::<Vec<_>>(), vec![("ok", true)]);
        assert!(file.render().contains("{../etc/passwd, true}."));
    }

    #[test]
    fn a_comment_after_an_entry_is_read_and_kept() {
        let text = "{emqx_retainer, true}. % keep retained messages\nemqx_mod_presence.%x\n";
        let (mut file, errors) = LoadedPlugins::parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(file.entries().collect::<Vec<_>>(), vec![("emqx_retainer", true), ("emqx_mod_presence", true)]);
        file.set("emqx_retainer", false);
        assert_eq!(file.render(), "{emqx_retainer, false}. % keep retained messages\n{emqx_mod_presence, true}. %x\n");
    }

    #[cfg(unix)]
    #[test]
    fn a_rewrite_keeps_a_symbolic_link_and_the_permissions() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real_loaded_plugins");
        fs::write(&real, "{a, true}.\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("loaded_plugins");
        symlink(&real, &link).unwrap();
        let (mut file, _) = LoadedPlugins::read(&link).unwrap();
        file.set("a", false);
        file.write(&link).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays");
        assert_eq!(fs::read_to_string(&real).unwrap(), "{a, false}.\n");
        assert_eq!(fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn set_updates_in_place_or_appends() {
        let (mut file, _) = LoadedPlugins::parse("% c\n{a, true}.\n");
        file.set("a", false);
        file.set("b", true);
        assert_eq!(file.render(), "% c\n{a, false}.\n{b, true}.\n");
    }

    #[test]
    fn names_are_never_paths() {
        for bad in ["", "a/b", "..", "a.b", "A", "a-b", "a b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(is_valid_name("emqx_mod_presence2"));
    }
}

/// Property tests: any text parses without panicking, and writing it back keeps what it said
/// (the fuzz target for the file).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_]{1,12}".prop_map(|n| format!("{{{n}, true}}.")),
            "[a-z0-9_]{1,12}".prop_map(|n| format!("{{{n},false}}.  ")),
            "[a-z0-9_]{1,12}".prop_map(|n| format!("{n}.")),
            "% [ -~]{0,20}",
            Just(String::new()),
            "[ -~]{0,24}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_text_parses(text in "(?s).{0,200}") {
            let (file, _) = LoadedPlugins::parse(&text);
            for (_, name, _) in file.numbered_entries() {
                prop_assert!(is_valid_name(name));
            }
        }

        #[test]
        fn render_keeps_entries_and_lines(lines in proptest::collection::vec(line(), 0..20), crlf in any::<bool>()) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let (file, errors) = LoadedPlugins::parse(&text);
            let (again, errors_again) = LoadedPlugins::parse(&file.render());
            prop_assert_eq!(file.entries().collect::<Vec<_>>(), again.entries().collect::<Vec<_>>());
            prop_assert_eq!(errors.len(), errors_again.len());
            prop_assert_eq!(file.render().lines().count(), text.lines().count());
        }

        #[test]
        fn set_then_parse(lines in proptest::collection::vec(line(), 0..10), name in "[a-z0-9_]{1,12}", enabled in any::<bool>()) {
            let (mut file, _) = LoadedPlugins::parse(&lines.join("\n"));
            file.set(&name, enabled);
            let (again, _) = LoadedPlugins::parse(&file.render());
            prop_assert_eq!(again.entries().find(|(n, _)| *n == name).map(|(_, e)| e), Some(enabled));
        }
    }
}
