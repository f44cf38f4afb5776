//! Compiles the Wechaty Puppet Service protocol (proto/) with protox, a pure-Rust
//! protobuf compiler, so no machine needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["wechaty/puppet.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
