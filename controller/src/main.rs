//! knockgate-controller binary (placeholder until the server is wired up).
#![forbid(unsafe_code)]

fn main() {
    println!("not yet");
}
