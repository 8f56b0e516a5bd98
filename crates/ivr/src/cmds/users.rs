//! `ivr cloud users …`: console accounts kept in the cloud's data
//! directory, for the first admin (before anyone can log in) and for
//! scripts. A running cloud sees changes within a second (same database;
//! what it verified a moment ago it trusts for up to a second, see
//! docs/security.md).

use anyhow::Context;
use clap::Subcommand;
use ivr_cloud::{Accounts, Grant, HashCost, Passwords, Role, SqlStore};
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum UsersCmd {
    /// Adds a console user. The password is asked for on the terminal, or
    /// read from the first line of stdin (--password-stdin).
    Add {
        /// The user's name (what they log in with).
        name: String,
        /// What they may do: admin (everything), operator (watch and
        /// control their devices), viewer (watch only).
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// The devices they may use: `*` for every one, or login codes
        /// separated by commas (admins always have every device).
        #[arg(long, default_value = "")]
        devices: String,
        /// Device groups (sites) they may use, separated by commas.
        #[arg(long, default_value = "")]
        groups: String,
        /// Read the password from stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: StoreAt,
    },
    /// Lists the console users.
    List {
        #[command(flatten)]
        data: StoreAt,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sets a user's password (every login of theirs ends).
    Passwd {
        /// The user's name.
        name: String,
        /// Read the password from stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: StoreAt,
    },
    /// Deletes a user (their logins end at once).
    Delete {
        /// The user's name.
        name: String,
        #[command(flatten)]
        data: StoreAt,
    },
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect()
}

/// Which cloud's store.
#[derive(clap::Args)]
pub struct StoreAt {
    /// The cloud's data directory (its SQLite database).
    #[arg(long, default_value = "ivr-data")]
    data: PathBuf,
    /// The cloud's --store: `sqlite` (in --data) or postgres://….
    #[arg(long, env = "IVR_STORE", hide_env_values = true, default_value = "sqlite")]
    store: String,
}

async fn open(at: &StoreAt) -> anyhow::Result<SqlStore> {
    if at.store != "sqlite" {
        return SqlStore::postgres(&at.store).await.context("--store: opening the PostgreSQL store");
    }
    let data = &at.data;
    if !data.join("ivr.sqlite3").exists() {
        anyhow::bail!(
            "--data {}: no cloud database there (start `ivr cloud --data {0}` once, or give the right --data)",
            data.display()
        );
    }
    SqlStore::open(data).with_context(|| format!("opening the store in {}", data.display()))
}

/// A password from the terminal (not echoed, asked twice) or stdin.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let tty = unsafe { libc::isatty(0) } == 1;
    let pw = if from_stdin || !tty {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let a = prompt("password: ")?;
        let b = prompt("again: ")?;
        if a != b {
            anyhow::bail!("the two passwords differ; nothing changed");
        }
        a
    };
    if pw.chars().count() < ivr_cloud::MIN_PASSWORD {
        anyhow::bail!("the password needs at least {} characters", ivr_cloud::MIN_PASSWORD);
    }
    Ok(pw)
}

/// Reads a line from the terminal with echo off.
fn prompt(what: &str) -> anyhow::Result<String> {
    use std::io::Write;
    eprint!("{what}");
    std::io::stderr().flush().ok();
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(0, &mut t) } == 0;
    if have {
        let mut quiet = t;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if have {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
    eprintln!();
    r.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

async fn audit(store: &SqlStore, action: &str, target: &str, detail: serde_json::Value) -> anyhow::Result<()> {
    store
        .add_audit(&ivr_cloud::AuditEntry {
            id: 0,
            at: chrono::Utc::now().timestamp(),
            actor: "cli".into(),
            action: action.into(),
            target: target.into(),
            detail,
            addr: None,
        })
        .await?;
    Ok(())
}

pub async fn run(cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Add { name, role, devices, groups, password_stdin, data } => {
            let store = open(&data).await?;
            let pw = read_password(password_stdin)?;
            let devices = match devices.trim() {
                "*" => Grant::All,
                d => match list(d) {
                    v if v.is_empty() => Grant::None,
                    v => Grant::Only(v),
                },
            };
            let passwords = Passwords::new(HashCost::default());
            let u = ivr_cloud::create_user(&store, &passwords, &name, &pw, role, devices, list(&groups))
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.msg))?;
            audit(&store, "user_created", &u.name, serde_json::json!({"role": u.role})).await?;
            println!("user {:?} added ({}); they log in at the console's /login", u.name, u.role.as_str());
        }
        UsersCmd::List { data, json } => {
            let users = open(&data).await?.users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!("{:<24} {:<9} {:<24} GROUPS", "NAME", "ROLE", "DEVICES");
                for u in users {
                    let devices = match &u.devices {
                        Grant::All => "*".to_string(),
                        Grant::None => "-".to_string(),
                        Grant::Only(v) => v.join(","),
                    };
                    println!("{:<24} {:<9} {:<24} {}", u.name, u.role.as_str(), devices, u.groups.join(","));
                }
            }
        }
        UsersCmd::Passwd { name, password_stdin, data } => {
            let store = open(&data).await?;
            let mut u = store.user(&name).await?.with_context(|| format!("no user {name:?}"))?;
            let pw = read_password(password_stdin)?;
            u.passwd_hash = Passwords::new(HashCost::default()).hash(&pw).await?;
            store.update_user(&u).await?;
            store.delete_login_sessions_of(&name).await?;
            audit(&store, "user_changed", &name, serde_json::json!({"changed": ["password"]})).await?;
            println!("password of {name:?} changed; their logins ended");
        }
        UsersCmd::Delete { name, data } => {
            let store = open(&data).await?;
            if !store.delete_user(&name).await? {
                anyhow::bail!("no user {name:?}");
            }
            audit(&store, "user_deleted", &name, serde_json::json!({})).await?;
            println!("user {name:?} deleted");
        }
    }
    Ok(())
}
