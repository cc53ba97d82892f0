//! The one-shot KV and status commands.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use shardkv_client::{Client, ReadConsistency, ScanOptions, Topology};

use crate::{AdminCommand, output};

pub async fn put(client: &Client, key: &str, value: &str) -> anyhow::Result<ExitCode> {
    let index = client.put(key, value).await?;
    println!("OK index={index}");
    Ok(ExitCode::SUCCESS)
}

pub async fn get(client: &Client, key: &str, serializable: bool) -> anyhow::Result<ExitCode> {
    let consistency = if serializable { ReadConsistency::Serializable } else { ReadConsistency::Linearizable };
    match client.get_with(key, consistency).await? {
        Some(value) => {
            write_line(&[&value])?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("key {key:?} not found");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn del(client: &Client, key: &str) -> anyhow::Result<ExitCode> {
    if client.delete(key).await? {
        println!("deleted");
    } else {
        println!("not found (nothing deleted)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cas(client: &Client, key: &str, values: &[String], expect_absent: bool) -> anyhow::Result<ExitCode> {
    let (expected, new_value) = match (expect_absent, values) {
        (true, [new_value]) => (None, new_value),
        (false, [expected, new_value]) => (Some(expected.clone().into_bytes()), new_value),
        (true, _) => anyhow::bail!("usage: shardkv cas --expect-absent KEY NEW"),
        (false, _) => anyhow::bail!("usage: shardkv cas KEY EXPECTED NEW"),
    };
    let outcome = client.compare_and_swap(key, expected, new_value.as_str()).await?;
    let previous = match &outcome.previous {
        Some(value) => format!("{:?}", String::from_utf8_lossy(value)),
        None => "absent".to_string(),
    };
    if outcome.succeeded {
        println!("succeeded (previous value: {previous})");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("failed (current value: {previous})");
        Ok(ExitCode::FAILURE)
    }
}

pub async fn scan(
    client: &Client,
    prefix: &Option<String>,
    start: &Option<String>,
    end: &Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let bytes = |text: &Option<String>| text.clone().unwrap_or_default().into_bytes();
    let items = client.scan(ScanOptions { start: bytes(start), end: bytes(end), prefix: bytes(prefix), limit }).await?;
    for (key, value) in &items {
        write_line(&[key, b"\t", value])?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    // An unreachable cluster still gets its per-endpoint table (with the errors).
    if let Ok(Topology::Sharded) = client.topology().await {
        let cluster = client.cluster_status().await?;
        if json {
            println!("{}", output::cluster_json(&cluster));
        } else {
            print!("{}", output::cluster_table(&cluster));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let statuses = client.status_all().await;
    if json {
        println!("{}", output::status_json(&statuses));
    } else {
        print!("{}", output::status_table(&statuses));
    }
    let any_answered = statuses.iter().any(|(_, status)| status.is_ok());
    Ok(if any_answered { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn admin(client: &Client, command: &AdminCommand) -> anyhow::Result<ExitCode> {
    let config = match command {
        AdminCommand::Join { group, members } => client.join(*group, members.clone()).await?,
        AdminCommand::Leave { group } => client.leave(*group).await?,
        AdminCommand::Move { shard, group } => client.move_shard(*shard, *group).await?,
        AdminCommand::Init { members } => {
            let endpoint = client.endpoints().first().context("no endpoint to initialise")?;
            client.initialize(endpoint, members.clone()).await?;
            println!("initialized the group on {endpoint} with {} voter(s)", members.len());
            return Ok(ExitCode::SUCCESS);
        }
        AdminCommand::Config { num, json } => {
            let config = client.query_config(*num).await?;
            if *json {
                println!("{}", output::config_json(&config));
            } else {
                print!("{}", output::config_text(&config));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("config {}", config.num);
    eprint!("{}", output::config_text(&config));
    Ok(ExitCode::SUCCESS)
}

/// Parses `NODE_ID=HOST:PORT`.
pub fn parse_member(text: &str) -> Result<(u64, String), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NODE_ID=HOST:PORT"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("bad node id {id:?} in {text:?}"))?;
    if id == 0 {
        return Err(format!("node ids start at 1 ({text:?})"));
    }
    let addr = addr.trim();
    if !addr.contains(':') {
        return Err(format!("address {addr:?} has no port (expected HOST:PORT)"));
    }
    Ok((id, addr.to_string()))
}

/// Writes raw bytes (values need not be UTF-8) followed by a newline.
fn write_line(parts: &[&[u8]]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    for part in parts {
        stdout.write_all(part)?;
    }
    stdout.write_all(b"\n")?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::parse_member;

    #[test]
    fn members_are_id_equals_address() {
        assert_eq!(parse_member("3=127.0.0.1:7112"), Ok((3, "127.0.0.1:7112".to_string())));
        assert!(parse_member("127.0.0.1:7112").is_err());
        assert!(parse_member("0=h:1").is_err());
        assert!(parse_member("x=h:1").is_err());
        assert!(parse_member("1=host").is_err());
    }
}
