//! The idempotency keys of events, written in one place: the parser builds
//! them here, and `EventKey::parse` reads them back (the load generator's
//! check looks each one up in the table that holds its kind). Built by
//! concatenation: one allocation per key, no formatting machinery.

use crate::Direction;

const MESSAGE: &str = "msg";
const ECHO: &str = "echo";
const STATUS: &str = "status";
const GROUP: &str = "group";
const OTHER: &str = "event";

/// `msg:{wamid}` or `echo:{wamid}`.
pub(crate) fn message(direction: Direction, wamid: &str) -> String {
    let prefix = match direction {
        Direction::Inbound => MESSAGE,
        Direction::Echo => ECHO,
    };
    [prefix, ":", wamid].concat()
}

/// `status:{wamid}:{status}`, with `:{participant}` for a group receipt.
pub(crate) fn status(wamid: &str, status: &str, participant: Option<&str>) -> String {
    match participant {
        Some(participant) => [STATUS, ":", wamid, ":", status, ":", participant].concat(),
        None => [STATUS, ":", wamid, ":", status].concat(),
    }
}

/// `group:{rest}`: `rest` says which change of which group, or is a hash.
pub(crate) fn group(rest: &str) -> String {
    [GROUP, ":", rest].concat()
}

/// `event:{hash}`.
pub(crate) fn other(hash: &str) -> String {
    [OTHER, ":", hash].concat()
}

/// What a key names, read back from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKey<'a> {
    /// An inbound message or an echo: a row of `messages`.
    Message { wamid: &'a str },
    /// A row of `message_statuses`; `participant` is `""` for a 1:1 status.
    Status {
        wamid: &'a str,
        status: &'a str,
        participant: &'a str,
    },
    /// A row of `group_events`, by its whole key.
    Group { key: &'a str },
    /// A row of `webhook_events`, by its whole key.
    Other { key: &'a str },
}

impl<'a> EventKey<'a> {
    /// Reads a key the parser made. Anything that is not a message, status
    /// or group key is an other event, as the parser makes them.
    pub fn parse(key: &'a str) -> Result<Self, String> {
        let (prefix, rest) = key.split_once(':').unwrap_or((key, ""));
        match prefix {
            MESSAGE | ECHO if !rest.is_empty() => Ok(Self::Message { wamid: rest }),
            // None of wamid, status and participant holds a ':'.
            STATUS => {
                let mut parts = rest.splitn(3, ':');
                match (parts.next(), parts.next()) {
                    (Some(wamid), Some(status)) if !wamid.is_empty() && !status.is_empty() => {
                        Ok(Self::Status {
                            wamid,
                            status,
                            participant: parts.next().unwrap_or(""),
                        })
                    }
                    _ => Err(format!("malformed status key {key}")),
                }
            }
            GROUP => Ok(Self::Group { key }),
            _ => Ok(Self::Other { key }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_they_were_made_from() {
        let group_key = group("G1:group_join:request:R1");
        let other_key = other("ab12");
        let cases = [
            (
                message(Direction::Inbound, "wamid.A"),
                "msg:wamid.A",
                EventKey::Message { wamid: "wamid.A" },
            ),
            (
                message(Direction::Echo, "wamid.A"),
                "echo:wamid.A",
                EventKey::Message { wamid: "wamid.A" },
            ),
            (
                status("wamid.B", "read", None),
                "status:wamid.B:read",
                EventKey::Status {
                    wamid: "wamid.B",
                    status: "read",
                    participant: "",
                },
            ),
            (
                status("wamid.B", "delivered", Some("US.123")),
                "status:wamid.B:delivered:US.123",
                EventKey::Status {
                    wamid: "wamid.B",
                    status: "delivered",
                    participant: "US.123",
                },
            ),
            (
                group_key.clone(),
                "group:G1:group_join:request:R1",
                EventKey::Group { key: &group_key },
            ),
            (
                other_key.clone(),
                "event:ab12",
                EventKey::Other { key: &other_key },
            ),
        ];
        for (made, text, read) in &cases {
            assert_eq!(made, text);
            assert_eq!(EventKey::parse(made).as_ref(), Ok(read), "{made}");
        }
    }

    #[test]
    fn a_status_key_without_its_status_is_refused() {
        for bad in [
            "status:",
            "status:wamid.B",
            "status::read",
            "status:wamid.B:",
        ] {
            assert!(EventKey::parse(bad).is_err(), "{bad}");
        }
    }
}
