//! Compiles `proto/netctl.proto` with protox (pure Rust, no system protoc) and
//! generates the tonic client and server code into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["netctl.proto"], ["proto"])?;
    // Every service uses netctl's codec: prost's, with smaller encoder
    // buffers. A delta's encoded items are `Bytes`, shared by every node's
    // message; a desired item's large kinds are boxed, so that the small
    // ones (most of a state) do not take their size. A task's environment
    // is ordered, so that an item always encodes the same: items are
    // compared by their encoding.
    tonic_prost_build::configure()
        .codec_path("crate::codec::NetctlCodec")
        .bytes(".netctl.v1.NodeStateDelta")
        .boxed(".netctl.v1.DesiredItem.item.task")
        .boxed(".netctl.v1.DesiredItem.item.network")
        .btree_map(".netctl.v1.TaskSpec.env")
        .compile_fds(descriptors)?;
    Ok(())
}
