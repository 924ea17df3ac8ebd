//! Compiles `proto/netctl.proto` with protox (pure Rust, no system protoc) and
//! generates the tonic client and server code into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["netctl.proto"], ["proto"])?;
    // Every service uses netctl's codec: prost's, with smaller encoder buffers.
    tonic_prost_build::configure().codec_path("crate::codec::NetctlCodec").compile_fds(descriptors)?;
    Ok(())
}
