//! The one-shot KV and status commands.

use std::io::Write;
use std::process::ExitCode;

use shardkv_client::{Client, ReadConsistency, ScanOptions};

use crate::output;

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
    let statuses = client.status_all().await;
    if json {
        println!("{}", output::status_json(&statuses));
    } else {
        print!("{}", output::status_table(&statuses));
    }
    let any_answered = statuses.iter().any(|(_, status)| status.is_ok());
    Ok(if any_answered { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
