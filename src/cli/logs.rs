//! `sidelog log create|list|describe|delete`: named logs.

use std::io::Write;

use clap::{Args, Subcommand};

use super::{ConnectArgs, stdout_err};
use crate::pb::sidelog as pb;

#[derive(Args, Debug)]
pub struct LogArgs {
    #[command(subcommand)]
    pub action: LogAction,
}

/// A log's own settings; each left out follows the agent's flag.
#[derive(Args, Debug, Clone, Default)]
pub struct SettingsArgs {
    /// Keep the log at or under this many bytes on disk.
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
    /// Remove records older than this (e.g. 7d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retention_age: Option<std::time::Duration>,
    /// The largest record the log accepts.
    #[arg(long, value_name = "BYTES")]
    pub max_record_bytes: Option<u64>,
    /// Roll segments at this size.
    #[arg(long, value_name = "BYTES")]
    pub segment_max_bytes: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum LogAction {
    /// Create a named log (a Raft group of its own over the cluster's voters).
    Create {
        /// `[a-z0-9][a-z0-9._-]{0,62}`.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Succeed when the log exists already.
        #[arg(long)]
        if_not_exists: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Every log, with its leader and offsets (as the node asked sees them).
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// One log: settings, leader, preferred leader, members, offsets, disk.
    Describe {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a named log and its records on every member.
    Delete {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

fn settings(s: &SettingsArgs) -> pb::LogSettings {
    pb::LogSettings {
        retention_bytes: s.retention_bytes.unwrap_or(0),
        retention_age_secs: s.retention_age.map_or(0, |d| d.as_secs().max(1)),
        max_record_bytes: s.max_record_bytes.unwrap_or(0),
        segment_max_bytes: s.segment_max_bytes.unwrap_or(0),
    }
}

fn or_default(v: u64) -> String {
    if v == 0 {
        "(agent default)".into()
    } else {
        v.to_string()
    }
}

pub async fn log(args: LogArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.action {
        LogAction::Create {
            name,
            settings: s,
            if_not_exists,
            connect,
        } => {
            let mut admin = connect.connect().await?.cluster();
            let info = admin
                .create_log(pb::CreateLogRequest {
                    name,
                    settings: Some(settings(&s)),
                    if_not_exists,
                })
                .await?
                .into_inner();
            writeln!(out, "created {}", info.name).map_err(stdout_err)?;
        }
        LogAction::List { connect } => {
            let mut admin = connect.connect().await?.cluster();
            let logs = admin.list_logs(pb::ListLogsRequest {}).await?.into_inner().logs;
            writeln!(
                out,
                "{:<32} {:<20} {:>12} {:>12} {:>14}",
                "LOG", "LEADER", "FIRST", "NEXT", "DISK BYTES"
            )
            .map_err(stdout_err)?;
            for l in logs {
                writeln!(
                    out,
                    "{:<32} {:<20} {:>12} {:>12} {:>14}",
                    l.name,
                    l.leader.as_deref().unwrap_or("-"),
                    l.first_offset,
                    l.next_offset,
                    l.disk_bytes
                )
                .map_err(stdout_err)?;
            }
        }
        LogAction::Describe { name, connect } => {
            let mut admin = connect.connect().await?.cluster();
            let l = admin.describe_log(pb::DescribeLogRequest { name }).await?.into_inner();
            let s = l.settings.unwrap_or_default();
            writeln!(out, "log:              {}", l.name).map_err(stdout_err)?;
            writeln!(out, "leader:           {}", l.leader.as_deref().unwrap_or("unknown")).map_err(stdout_err)?;
            if !l.preferred_leader.is_empty() {
                writeln!(out, "preferred leader: {}", l.preferred_leader).map_err(stdout_err)?;
            }
            writeln!(out, "voters:           {}", l.voters.join(", ")).map_err(stdout_err)?;
            writeln!(out, "non-voters:       {}", l.learners.join(", ")).map_err(stdout_err)?;
            writeln!(out, "offsets:          [{}, {})", l.first_offset, l.next_offset).map_err(stdout_err)?;
            writeln!(out, "disk bytes:       {}", l.disk_bytes).map_err(stdout_err)?;
            writeln!(out, "retention bytes:  {}", or_default(s.retention_bytes)).map_err(stdout_err)?;
            writeln!(out, "retention age:    {}", or_default(s.retention_age_secs)).map_err(stdout_err)?;
            writeln!(out, "max record bytes: {}", or_default(s.max_record_bytes)).map_err(stdout_err)?;
            writeln!(out, "segment bytes:    {}", or_default(s.segment_max_bytes)).map_err(stdout_err)?;
        }
        LogAction::Delete { name, connect } => {
            let mut admin = connect.connect().await?.cluster();
            admin.delete_log(pb::DeleteLogRequest { name: name.clone() }).await?;
            writeln!(out, "deleted {name}").map_err(stdout_err)?;
        }
    }
    Ok(())
}
