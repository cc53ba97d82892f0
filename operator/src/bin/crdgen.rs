//! Prints the ShardCluster CustomResourceDefinition as YAML (what `crds/` and the chart ship).

fn main() -> anyhow::Result<()> {
    print!("{}", shardkv_operator::crd::crd_yaml()?);
    Ok(())
}
