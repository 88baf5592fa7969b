//! The lab demo. Part one: a gateway on its own, configured from its file. Part two: the
//! fleet — a controller, two gateways enrolled with one-time tokens, a user and a policy
//! made with knockadm, a knock, and the audit trail. Every namespace, link, table and
//! process is removed when the guards drop.

mod fleet;
mod standalone;

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Tool output, each line indented under the step that ran the tool.
fn print_indented(bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("    {line}");
    }
}

fn show(ok: bool, what: &str) -> bool {
    println!("    {} {what}", if ok { "OPEN  " } else { "CLOSED" });
    ok
}

fn main() {
    println!("knockgate lab, part one: a standalone gateway");
    let one = standalone::run();
    println!("\nknockgate lab, part two: a fleet run from the controller");
    let two = fleet::run();
    if one && two {
        println!("\nlab demo: OK");
    } else {
        println!("\nlab demo: FAILED");
        std::process::exit(1);
    }
}
