fn main() {
    eprintln!("virt-api-metrics: not built yet");
    std::process::exit(1);
}
