//! Where virt-handler statistics come from.

pub mod launcher;
#[cfg(feature = "libvirt")]
pub mod libvirt;
