//! `broker ctl users ...` and `broker ctl clientid ...`, as EMQX 4.3's `emqx_ctl users` and
//! `emqx_ctl clientid`: `list` prints one name a line (newest first), `add`, `update` and
//! `del` print `ok`. Failures are typed (`Conflict`, `NotFound`, `InvalidArgument`) so the
//! management API answers 409, 404 and 400. `list --json` and `show NAME` print JSON for it
//! (never a password or its hash).

use plugin_api::HostError;
use serde_json::json;

use crate::credentials::{Credentials, Login};
use crate::store::Kind;

const USERS_USAGE: &str = "usage: broker ctl users list | show <Username> | add <Username> <Password> [is_superuser] \
                           | update <Username> <NewPassword> [is_superuser] | del <Username>";
const CLIENTID_USAGE: &str = "usage: broker ctl clientid list | show <ClientId> | add <ClientId> <Password> \
                              [is_superuser] | update <ClientId> <NewPassword> [is_superuser] | del <ClientId>";

/// A login as JSON, EMQX's field name for its kind.
fn json_of(kind: Kind, login: &Login) -> serde_json::Value {
    json!({kind.field(): login.name, "is_superuser": login.is_superuser, "created_at": login.created_at})
}

/// The optional superuser word: `is_superuser` or `true` make one, `false` does not.
fn superuser(word: Option<&str>, usage: &str) -> Result<Option<bool>, HostError> {
    match word {
        None => Ok(None),
        Some("is_superuser" | "true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => {
            Err(HostError::InvalidArgument(format!("{other:?} is not is_superuser, true or false; {usage}")))
        }
    }
}

/// Runs one command; `words` starts with `users` or `clientid`.
pub fn run(credentials: &Credentials, words: &[String]) -> Result<String, HostError> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (kind, usage, rest) = match words.as_slice() {
        ["users", rest @ ..] => (Kind::Username, USERS_USAGE, rest),
        ["clientid", rest @ ..] => (Kind::Clientid, CLIENTID_USAGE, rest),
        _ => return Err(HostError::InvalidArgument(format!("{USERS_USAGE}\n{CLIENTID_USAGE}"))),
    };
    match rest {
        ["list"] => Ok(credentials.list(kind).into_iter().map(|l| l.name).collect::<Vec<_>>().join("\n")),
        ["list", "--json"] => {
            let list: Vec<_> = credentials.list(kind).iter().map(|l| json_of(kind, l)).collect();
            Ok(serde_json::Value::Array(list).to_string())
        }
        ["show", name] => Ok(json_of(kind, &credentials.lookup(kind, name)?).to_string()),
        ["add", name, password, flag @ ..] if flag.len() <= 1 => {
            let is_superuser = superuser(flag.first().copied(), usage)?.unwrap_or(false);
            credentials.add(kind, name, password, is_superuser)?;
            Ok("ok".to_owned())
        }
        ["update", name, password, flag @ ..] if flag.len() <= 1 => {
            credentials.update(kind, name, password, superuser(flag.first().copied(), usage)?)?;
            Ok("ok".to_owned())
        }
        ["del", name] => {
            credentials.delete(kind, name)?;
            Ok("ok".to_owned())
        }
        _ => Err(HostError::InvalidArgument(usage.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::{hasher, MemoryPersist};
    use crate::hash::Algorithm;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn emqx_outputs_and_typed_failures() {
        let persist = std::sync::Arc::new(MemoryPersist::default());
        let c = Credentials::new(persist.logins(), hasher(Algorithm::Sha256), Box::new(persist));
        assert_eq!(run(&c, &words("users add alice pw")).unwrap(), "ok");
        assert_eq!(run(&c, &words("users add root pw is_superuser")).unwrap(), "ok");
        let list = run(&c, &words("users list")).unwrap();
        assert_eq!(list.lines().collect::<std::collections::BTreeSet<_>>(), ["alice", "root"].into());
        let root: serde_json::Value = serde_json::from_str(&run(&c, &words("users show root")).unwrap()).unwrap();
        assert_eq!((&root["username"], &root["is_superuser"]), (&json!("root"), &json!(true)));
        assert!(root.get("password").is_none());
        assert!(matches!(run(&c, &words("users add alice x")), Err(HostError::Conflict(_))));
        assert!(matches!(run(&c, &words("users del bob")), Err(HostError::NotFound(_))));
        assert!(matches!(run(&c, &words("users add a b maybe")), Err(HostError::InvalidArgument(_))));
        assert!(matches!(run(&c, &words("users frobnicate")), Err(HostError::InvalidArgument(_))));
        assert_eq!(run(&c, &words("clientid add sensor-1 k")).unwrap(), "ok");
        assert_eq!(run(&c, &words("clientid list")).unwrap(), "sensor-1");
        assert_eq!(run(&c, &words("users del alice")).unwrap(), "ok");
        assert_eq!(run(&c, &words("users list")).unwrap(), "root");
    }
}
