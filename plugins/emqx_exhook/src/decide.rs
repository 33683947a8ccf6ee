//! How the servers' `ValuedResponse`s decide, as EMQX's `emqx_exhook:call_fold/3` folds them:
//! the servers are asked in the configured order, each with the answer so far.
//!
//! - `CONTINUE` with a value: the value is the answer so far; the next server is asked.
//! - `STOP_AND_RETURN` with a value: the value is the answer; no other server is asked.
//! - `IGNORE`, or an answer without the value the hook needs: as if not asked.
//! - No answer (down, slow, an error status): `failed_action`: `deny` ends the fold with a
//!   refusal, `ignore` goes on to the next server.
//!
//! For `client.authenticate` and `client.check_acl` the broker's plugin chain takes an answer
//! as final (Allow or Deny end it, as in Mosquitto): a value from any server decides, and no
//! value at all leaves the client to the plugins after this one (and the broker's
//! `allow_anonymous`, or its ACL default). EMQX lets hooks after exhook see and change a
//! `CONTINUE` value; this broker's ABI has no such tentative answer.

use std::sync::Arc;

use crate::point::Point;
use crate::proto::v2::valued_response::{ResponsedType, Value};
use crate::proto::{v2, Answer, Rpc};
use crate::request::Context;
use crate::server::Server;
use crate::settings::FailedAction;

/// What a server's `ValuedResponse` says, or `None` for no value.
fn read(answer: &Answer, server: &Server, point: Point) -> Option<(bool, Option<Value>)> {
    let Answer::Valued(response) = answer else {
        return None;
    };
    let stop = match ResponsedType::try_from(response.r#type) {
        Ok(ResponsedType::Ignore) => return None,
        Ok(ResponsedType::Continue) => false,
        Ok(ResponsedType::StopAndReturn) => true,
        Err(_) => {
            server.warn(&format!(
                "{}: unknown ValuedResponse type {}, ignored",
                point.name(server.settings.proto),
                response.r#type
            ));
            return None;
        }
    };
    Some((stop, response.value.clone()))
}

/// Sets the answer so far of an authenticate or authorize request.
fn set_result(rpc: &mut Rpc, value: bool) {
    match rpc {
        Rpc::ClientAuthenticate(r) => r.result = value,
        Rpc::ClientAuthorize(r) => r.result = value,
        _ => {}
    }
}

/// `client.authenticate` / `client.check_acl`: `Some(allowed)` once a server gave a value (or
/// failed with `failed_action = deny`: `Some(false)`), `None` if none did.
pub(crate) async fn fold_bool(servers: Arc<[Arc<Server>]>, point: Point, key: String, mut rpc: Rpc) -> Option<bool> {
    let mut answer = None;
    for server in servers.iter() {
        if server.denies_while_down(point, None) {
            return Some(false);
        }
        if !server.wants(point, None) {
            continue;
        }
        match server.call(point, &key, rpc.clone()).await {
            Ok(reply) => match read(&reply, server, point) {
                None => {}
                Some((stop, Some(Value::BoolResult(allowed)))) => {
                    answer = Some(allowed);
                    set_result(&mut rpc, allowed);
                    if stop {
                        break;
                    }
                }
                Some(_) => server.warn(&format!(
                    "{}: a ValuedResponse without bool_result, ignored",
                    point.name(server.settings.proto)
                )),
            },
            Err(_) if server.settings.failed_action == FailedAction::Deny => return Some(false),
            Err(_) => {}
        }
    }
    answer
}

/// What `message.publish` does with the message.
#[derive(Debug)]
pub(crate) enum Publish {
    /// Drop it: a server's answer had the header `allow_publish = "false"` (v2), or a server
    /// that was asked failed with `failed_action = deny`.
    Drop,
    /// Go on with it, as the last server that gave a message left it.
    Keep(v2::Message),
    /// Go on with it as it was: no server gave a message.
    Unchanged,
}

/// `message.publish`: each server that wants the message's topic (as the servers before it
/// left it) gets it and may answer a new one.
pub(crate) async fn fold_message(
    servers: Arc<[Arc<Server>]>,
    context: Arc<Context>,
    key: String,
    message: v2::Message,
) -> Publish {
    let point = Point::MessagePublish;
    // `None` once the message went, as the hook got it, to the last server: it is not copied
    // for that call (most often the only one), as `Unchanged` says all there is to say.
    let mut message = Some(message);
    let mut changed = false;
    for (i, server) in servers.iter().enumerate() {
        let Some(current) = &message else { break };
        if server.denies_while_down(point, Some(&current.topic)) {
            return Publish::Drop;
        }
        if !server.wants(point, Some(&current.topic)) {
            continue;
        }
        let last = i + 1 == servers.len();
        let sent = if last && !changed { message.take() } else { message.clone() };
        let sent = sent.unwrap_or_default();
        match server.call(point, &key, context.publish(sent)).await {
            Ok(reply) => match read(&reply, server, point) {
                None => {}
                Some((stop, Some(Value::Message(answered)))) => {
                    message = Some(answered);
                    changed = true;
                    if stop {
                        break;
                    }
                }
                Some(_) => server.warn("message.publish: a ValuedResponse without message, ignored"),
            },
            Err(_) if server.settings.failed_action == FailedAction::Deny => return Publish::Drop,
            Err(_) => {}
        }
    }
    match message {
        Some(m) if m.headers.get("allow_publish").map(String::as_str) == Some("false") => Publish::Drop,
        Some(m) if changed => Publish::Keep(m),
        _ => Publish::Unchanged,
    }
}
