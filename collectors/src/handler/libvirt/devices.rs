//! What the bulk stats do not say: a domain's VMI identity and its device aliases.

use crate::handler::stats::{DomainStats, VmiIdentity};

/// KubeVirt writes every user-visible device alias with this prefix (libvirt only keeps
/// user aliases that start with it) and strips it when reading the domain back
/// (`UserAliasPrefix` and `Alias.UnmarshalXML` in `virtwrap/api/schema.go`).
const USER_ALIAS_PREFIX: &str = "ua-";

/// The identity KubeVirt gives a domain: it names domains `<namespace>_<name>`
/// (`VMINamespaceKeyFunc`), and neither part can contain `_` (both are DNS names), so the
/// first `_` splits them. A domain without `_` is not KubeVirt's (a plain libvirt host):
/// it gets an empty namespace, which KubeVirt's label rules then leave out, and its whole
/// name as `name`.
pub fn identity(domain_name: &str, node: &str) -> VmiIdentity {
    let (namespace, name) = domain_name.split_once('_').unwrap_or(("", domain_name));
    VmiIdentity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        node: node.to_owned(),
        labels: Default::default(),
        ..Default::default()
    }
}

/// Device target name (`vnet0`, `vda`) → alias, from the live domain XML, as the launcher's
/// `GetDeviceAliasMap` builds it: interfaces and disks, `ua-` stripped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasMap {
    /// Every interface and disk with a target name, with its alias when it has one.
    entries: Vec<(String, Option<String>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("domain XML: {0}")]
pub struct XmlError(#[from] roxmltree::Error);

impl AliasMap {
    pub fn from_domain_xml(xml: &str) -> Result<Self, XmlError> {
        let doc = roxmltree::Document::parse(xml)?;
        let mut entries = Vec::new();
        let devices = doc
            .root_element()
            .children()
            .filter(|n| n.has_tag_name("devices"));
        for device in devices.flat_map(|d| d.children()) {
            if !(device.has_tag_name("interface") || device.has_tag_name("disk")) {
                continue;
            }
            let child_attr = |tag: &str, attr: &str| {
                device
                    .children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.attribute(attr))
            };
            let Some(target) = child_attr("target", "dev") else {
                continue;
            };
            let alias = child_attr("alias", "name").map(|alias| {
                alias
                    .strip_prefix(USER_ALIAS_PREFIX)
                    .unwrap_or(alias)
                    .to_owned()
            });
            entries.push((target.to_owned(), alias));
        }
        Ok(Self { entries })
    }

    pub fn get(&self, target: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(t, _)| t == target)
            .and_then(|(_, alias)| alias.as_deref())
    }

    fn knows(&self, target: &str) -> bool {
        self.entries.iter().any(|(t, _)| t == target)
    }

    /// Whether every named net and block device of `stats` has an entry; when not, a device
    /// was hot-plugged since the map was read and it must be read again.
    pub fn covers(&self, stats: &DomainStats) -> bool {
        let nets = stats.nets.iter().filter_map(|n| n.name.as_deref());
        let blocks = stats.blocks.iter().filter_map(|b| b.name.as_deref());
        nets.chain(blocks).all(|name| self.knows(name))
    }

    /// Sets `alias` on the net and block devices the map knows, with the launcher's
    /// semantics: a known NIC always gets an alias (empty when its XML has none: KubeVirt's
    /// `AliasSet` is "the target is in the map"), a disk only a non-empty one (KubeVirt
    /// falls back to the target name for an empty disk alias anyway).
    pub fn apply(&self, stats: &mut DomainStats) {
        for net in &mut stats.nets {
            if let Some(name) = net.name.as_deref().filter(|n| self.knows(n)) {
                net.alias = Some(self.get(name).unwrap_or_default().to_owned());
            }
        }
        for block in &mut stats.blocks {
            if let Some(alias) = block.name.as_deref().and_then(|n| self.get(n)) {
                block.alias = Some(alias.to_owned());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handler::stats::{BlockStats, NetStats};

    #[test]
    fn kubevirt_domain_names_split_at_the_first_underscore() {
        let id = identity("default_testvm", "node-1");
        assert_eq!(
            (id.namespace.as_str(), id.name.as_str(), id.node.as_str()),
            ("default", "testvm", "node-1")
        );
        assert!(id.labels.is_empty());
        let id = identity("plainhost", "n");
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("", "plainhost"));
        let id = identity("ns_a_b", "n");
        assert_eq!((id.namespace.as_str(), id.name.as_str()), ("ns", "a_b"));
    }

    /// Trimmed from `virsh dumpxml default_testvm` of the real test guest.
    const LIVE_XML: &str = r#"<domain type='qemu' id='1'>
  <name>default_testvm</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/tmp/kvms-peers/guest/disk.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-rootdisk'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <alias name='sata0-0-0'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'><alias name='usb'/></controller>
    <interface type='ethernet'>
      <mac address='52:54:00:12:34:56'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='ua-default'/>
    </interface>
    <interface type='ethernet'>
      <target dev='vnet1'/>
    </interface>
    <memballoon model='virtio'><alias name='balloon0'/></memballoon>
  </devices>
</domain>"#;

    #[test]
    fn aliases_come_from_interfaces_and_disks_without_the_user_prefix() {
        let map = AliasMap::from_domain_xml(LIVE_XML).unwrap();
        assert_eq!(map.get("vda"), Some("rootdisk"));
        assert_eq!(map.get("vnet0"), Some("default"));
        // libvirt's own aliases are kept as they are.
        assert_eq!(map.get("sda"), Some("sata0-0-0"));
        // No alias element, no alias (but the device is known).
        assert_eq!(map.get("vnet1"), None);
        assert!(map.knows("vnet1"));
        assert_eq!(map.get("usb"), None);
    }

    #[test]
    fn apply_and_coverage() {
        let map = AliasMap::from_domain_xml(LIVE_XML).unwrap();
        let mut stats = DomainStats {
            nets: vec![NetStats {
                name: Some("vnet0".into()),
                ..Default::default()
            }],
            blocks: vec![
                BlockStats {
                    name: Some("vda".into()),
                    ..Default::default()
                },
                BlockStats::default(),
            ],
            ..Default::default()
        };
        assert!(map.covers(&stats));
        map.apply(&mut stats);
        assert_eq!(stats.nets[0].alias.as_deref(), Some("default"));
        assert_eq!(stats.blocks[0].alias.as_deref(), Some("rootdisk"));
        assert_eq!(stats.blocks[1].alias, None);
        let mut bare = DomainStats {
            nets: vec![NetStats {
                name: Some("vnet1".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        map.apply(&mut bare);
        assert_eq!(
            bare.nets[0].alias.as_deref(),
            Some(""),
            "known NIC without alias"
        );
        stats.blocks.push(BlockStats {
            name: Some("vdb".into()),
            ..Default::default()
        });
        assert!(!map.covers(&stats), "a hot-plugged disk needs a fresh map");
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(AliasMap::from_domain_xml("<domain><devices>").is_err());
        assert_eq!(
            AliasMap::from_domain_xml("<domain/>").unwrap(),
            AliasMap::default()
        );
    }
}
