//! The bodies of `out.redis` (ipc-protocol/SPEC.md, "out.redis"): commands as length-prefixed
//! argument lists and replies as tagged values, bytes exact both ways; and which commands a
//! shared multiplexed connection refuses.
//!
//! A command: `argc` (u32, big-endian, ≥ 1), then per argument its length (u32 BE) and its
//! bytes. A reply value: one tag byte, then
//!
//! | tag | RESP type | then |
//! |---|---|---|
//! | `_` | nil (null bulk string, null array) | nothing |
//! | `:` | integer | i64 BE |
//! | `$` | bulk string | u32 BE length, the bytes |
//! | `+` | simple string (status: `OK`, `PONG`, `QUEUED`…) | u32 BE length, its UTF-8 |
//! | `*` | array | u32 BE count, the values |
//! | `-` | error (an element of a pipeline's or transaction's replies) | u32 BE length, Redis's message as UTF-8 |
//!
//! The connection speaks RESP2, which has only these; the RESP3 types the client library
//! knows are mapped for completeness (a double as its decimal text `$`, a boolean as `:`
//! 0/1, a map as the flat array of its keys and values, a set or push as an array, a
//! verbatim string or big number as `$` of its text).

use redis::Value;

/// Tags of the reply values.
pub const NIL: u8 = b'_';
pub const INT: u8 = b':';
pub const BULK: u8 = b'$';
pub const SIMPLE: u8 = b'+';
pub const ARRAY: u8 = b'*';
pub const ERROR: u8 = b'-';

/// One command's arguments, the command's name first.
pub type Command = Vec<Vec<u8>>;

/// Reads `count` commands from `body` (which must hold exactly them).
pub fn decode_commands(body: &[u8], count: usize) -> Result<Vec<Command>, String> {
    let mut at = 0;
    let take_u32 = |at: &mut usize| -> Result<usize, String> {
        let end = *at + 4;
        let b = body
            .get(*at..end)
            .ok_or_else(|| format!("the body ends inside a length at byte {}", *at))?;
        *at = end;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let mut out = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let argc = take_u32(&mut at)?;
        if argc == 0 {
            return Err(format!("command {i} has no arguments"));
        }
        // Each argument needs at least its 4 length bytes: a bound before allocating.
        if argc > (body.len() - at) / 4 {
            return Err(format!(
                "command {i}: {argc} arguments do not fit in the body"
            ));
        }
        let mut args = Vec::with_capacity(argc);
        for _ in 0..argc {
            let len = take_u32(&mut at)?;
            let arg = body
                .get(at..at + len)
                .ok_or_else(|| format!("command {i}: an argument runs past the body"))?;
            args.push(arg.to_vec());
            at += len;
        }
        out.push(args);
    }
    if at != body.len() {
        return Err(format!(
            "{} bytes after the {count} command(s) the meta announces",
            body.len() - at
        ));
    }
    Ok(out)
}

/// Appends `v` to `out`.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    let bytes = |out: &mut Vec<u8>, tag: u8, b: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    let array = |out: &mut Vec<u8>, items: &mut dyn ExactSizeIterator<Item = &Value>| {
        out.push(ARRAY);
        out.extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            encode_value(item, out);
        }
    };
    match v {
        Value::Nil => out.push(NIL),
        Value::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::BulkString(b) => bytes(out, BULK, b),
        Value::SimpleString(s) => bytes(out, SIMPLE, s.as_bytes()),
        Value::Okay => bytes(out, SIMPLE, b"OK"),
        Value::Array(items) | Value::Set(items) => array(out, &mut items.iter()),
        Value::Push { data, .. } => array(out, &mut data.iter()),
        Value::Map(pairs) => {
            out.push(ARRAY);
            out.extend_from_slice(&((pairs.len() * 2) as u32).to_be_bytes());
            for (k, v) in pairs {
                encode_value(k, out);
                encode_value(v, out);
            }
        }
        Value::Attribute { data, .. } => encode_value(data, out),
        Value::Double(d) => bytes(out, BULK, d.to_string().as_bytes()),
        Value::Boolean(b) => {
            out.push(INT);
            out.extend_from_slice(&i64::from(*b).to_be_bytes());
        }
        Value::VerbatimString { text, .. } => bytes(out, BULK, text.as_bytes()),
        Value::BigNumber(digits) => bytes(out, BULK, digits),
        Value::ServerError(e) => bytes(out, ERROR, server_message(e).as_bytes()),
        // `Value` is non-exhaustive: a type a later `redis` crate adds (none on RESP2) is
        // passed on as its text rather than dropped.
        other => bytes(out, BULK, format!("{other:?}").as_bytes()),
    }
}

/// Redis's own message of an error reply: `WRONGTYPE Operation against a key holding the
/// wrong kind of value`, as the server sent it.
pub fn server_message(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) if !d.is_empty() => format!("{} {d}", e.code()),
        _ => e.code().to_owned(),
    }
}

/// Why a command may not go through a shared multiplexed connection, or none.
///
/// Refused: what would change the connection for every other call multiplexed on it
/// (`SELECT`, `AUTH`, `HELLO`, `RESET`, `QUIT`, `CLIENT` but ID, INFO, LIST, GETNAME and HELP
/// — so `CLIENT NO-EVICT` / `NO-TOUCH` / `SETNAME` / `KILL` … are refused,
/// `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH`: a transaction is `transaction=True` of a
/// pipeline), what turns it into a stream (the `SUBSCRIBE` family, `MONITOR`, `SYNC`,
/// `PSYNC`, `REPLCONF`), and the blocking commands (`BLPOP`, `BRPOP`, `BLMOVE`,
/// `BRPOPLPUSH`, `BLMPOP`, `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`, `WAIT`, `WAITAOF`, `XREAD` /
/// `XREADGROUP` with `BLOCK`): Redis answers a connection's commands in order, so one
/// blocked command stalls every call behind it on that connection.
pub fn refused(args: &[Vec<u8>]) -> Option<String> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let sub = || {
        args.get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    let why = match name.as_str() {
        "SELECT" => "the db is the connection's (the number in its address)",
        "AUTH" | "HELLO" | "RESET" => "the credentials and protocol are the connection's",
        "QUIT" => "the server closes the shared connection",
        "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH" => {
            "a transaction spans calls on a shared connection: use pipeline(transaction=True)"
        }
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" | "MONITOR" | "SYNC" | "PSYNC" | "REPLCONF" => {
            "it turns the shared connection into a stream of messages"
        }
        "BLPOP" | "BRPOP" | "BLMOVE" | "BRPOPLPUSH" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX"
        | "BZMPOP" | "WAIT" | "WAITAOF" => {
            "a blocking command stalls every call behind it on the shared connection (use \
             the non-blocking form: LPOP, RPOP, LMOVE...)"
        }
        // Options come before STREAMS; after it, keys and ids (a key may be named BLOCK).
        "XREAD" | "XREADGROUP"
            if args[1..]
                .iter()
                .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK")) =>
        {
            "BLOCK stalls every call behind it on the shared connection (read without BLOCK)"
        }
        "CLIENT" => match sub().as_str() {
            "ID" | "INFO" | "LIST" | "GETNAME" | "HELP" => return None,
            _ => "only CLIENT ID, INFO, LIST, GETNAME and HELP are allowed on a shared connection",
        },
        _ => return None,
    };
    Some(format!("{name} is refused: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut b = (args.len() as u32).to_be_bytes().to_vec();
        for a in args {
            b.extend_from_slice(&(a.len() as u32).to_be_bytes());
            b.extend_from_slice(a);
        }
        b
    }

    #[test]
    fn commands_are_read_bytes_exact_and_checked() {
        let mut body = cmd(&[b"SET", b"k\x00\xff", b""]);
        body.extend(cmd(&[b"GET", b"k\x00\xff"]));
        let got = decode_commands(&body, 2).unwrap();
        assert_eq!(got[0], vec![b"SET".to_vec(), b"k\x00\xff".to_vec(), vec![]]);
        assert_eq!(got[1], vec![b"GET".to_vec(), b"k\x00\xff".to_vec()]);
        assert!(
            decode_commands(&body, 1)
                .unwrap_err()
                .contains("bytes after")
        );
        assert!(
            decode_commands(&body, 3)
                .unwrap_err()
                .contains("ends inside")
        );
        assert!(
            decode_commands(&body[..body.len() - 1], 2)
                .unwrap_err()
                .contains("past")
        );
        assert!(
            decode_commands(&cmd(&[]), 1)
                .unwrap_err()
                .contains("no arguments")
        );
        let huge = u32::MAX.to_be_bytes();
        assert!(
            decode_commands(&huge, 1)
                .unwrap_err()
                .contains("do not fit")
        );
    }

    #[test]
    fn replies_keep_their_resp_type() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::Int(-2),
            Value::BulkString(b"\x00b".to_vec()),
            Value::Okay,
            Value::SimpleString("PONG".into()),
        ]);
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        let mut want = vec![ARRAY, 0, 0, 0, 5, NIL, INT];
        want.extend((-2i64).to_be_bytes());
        want.extend([BULK, 0, 0, 0, 2, 0, b'b', SIMPLE, 0, 0, 0, 2, b'O', b'K']);
        want.extend([SIMPLE, 0, 0, 0, 4]);
        want.extend(b"PONG");
        assert_eq!(out, want);
    }

    #[test]
    fn commands_that_would_hijack_the_shared_connection_are_refused() {
        let args = |s: &str| {
            s.split(' ')
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        for bad in [
            "select 1",
            "AUTH x",
            "subscribe ch",
            "MONITOR",
            "blpop k 0",
            "multi",
            "QUIT",
            "client kill id 3",
            "CLIENT SETNAME x",
            "XREAD COUNT 1 block 0 STREAMS s $",
            "client no-evict on",
            "CLIENT NO-TOUCH on",
            "XREADGROUP GROUP g c BLOCK 10 STREAMS s >",
        ] {
            let why = refused(&args(bad)).unwrap_or_else(|| panic!("{bad} passed"));
            assert!(why.contains("is refused"), "{why}");
        }
        for ok in [
            "GET k",
            "client id",
            "XREAD COUNT 1 STREAMS s 0",
            "XREAD STREAMS block s 0 0",
            "XREADGROUP GROUP g c STREAMS BLOCK >",
            "PUBLISH ch m",
            "SET select 1",
        ] {
            assert_eq!(refused(&args(ok)), None, "{ok}");
        }
    }
}
