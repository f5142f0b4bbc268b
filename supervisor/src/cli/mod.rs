//! The `oxbus` command line: every subcommand but `server` itself lives here (the admin
//! client, `quickstart`, `proxy`, `systemd install`). It talks to a running server only
//! through the admin API or the files a server reads; it never reaches into a running
//! server's state.

pub mod client;
pub mod proxy_cmd;
pub mod quickstart;
pub mod systemd_units;
