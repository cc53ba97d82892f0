fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; protoc is taken from the vendored crate so
    // that no system protoc is needed.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let protos = [
        "shardkv/v1/kv.proto",
        "shardkv/v1/admin.proto",
        "shardkv/v1/raft.proto",
        "shardkv/v1/meta.proto",
        "shardkv/v1/migration.proto",
    ];
    let descriptor = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("shardkv_descriptor.bin");
    tonic_prost_build::configure().file_descriptor_set_path(descriptor).compile_protos(&protos, &["."])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
