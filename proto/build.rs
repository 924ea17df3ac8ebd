//! Compiles `proto/netctl.proto` with protox (pure Rust, no system protoc) and
//! generates the tonic client and server code into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["netctl.proto"], ["proto"])?;
    // Every service uses netctl's codec: prost's, with smaller encoder
    // buffers. A delta's encoded items are `Bytes`, shared by every node's
    // message; a desired item's kinds are boxed (a cluster node's address
    // aside), so that a node's map of items moves pointers, not items, as
    // it grows (unboxed, an endpoint made every item 152 bytes, and the
    // simulated fleet spent a fifth of its time moving them). A task's environment
    // is ordered, so that an item always encodes the same: items are
    // compared by their encoding.
    tonic_prost_build::configure()
        .codec_path("crate::codec::NetctlCodec")
        .bytes(".netctl.v1.NodeStateDelta")
        .boxed(".netctl.v1.DesiredItem.item.header")
        .boxed(".netctl.v1.DesiredItem.item.network")
        .boxed(".netctl.v1.DesiredItem.item.task")
        .boxed(".netctl.v1.DesiredItem.item.port")
        .boxed(".netctl.v1.DesiredItem.item.vip")
        .boxed(".netctl.v1.DesiredItem.item.names")
        .boxed(".netctl.v1.DesiredItem.item.endpoint")
        .btree_map(".netctl.v1.TaskSpec.env")
        .compile_fds(descriptors)?;
    Ok(())
}
