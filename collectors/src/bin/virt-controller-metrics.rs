fn main() {
    eprintln!("virt-controller-metrics: not built yet");
    std::process::exit(1);
}
