"""Multi-GPU host reports built from a real one-GPU ``nvidia-smi -q -x`` report.

The demo data and the tests need hosts with 8 GPUs of several models; the only real report at
hand has one H200. ``synthesize_report`` copies its ``<gpu>`` element N times with new UUIDs,
PCI bus ids and minor numbers (deterministic from a seed), and may rename the product and its
memory, so every synthetic host goes through the same parser as a real one.
"""

import copy
import uuid
from pathlib import Path
from xml.etree import ElementTree as StdElementTree  # nosec B405 # writes XML, never parses

from defusedxml import ElementTree

DATA_DIR = Path(__file__).resolve().parent / "data"
H200_REPORT = DATA_DIR / "h200-nvidia-smi-q.xml"
H200_MIG_TABLES = DATA_DIR / "h200-host.txt"
H100_MIG_TABLES = DATA_DIR / "h100-host.txt"

# product name and memory (MiB) as nvidia-smi reports them
PRODUCTS = {
    "H200": ("NVIDIA H200", 143771),
    "H100": ("NVIDIA H100 80GB HBM3", 81559),
    "A100": ("NVIDIA A100-SXM4-40GB", 40960),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", 81920),
    "L40S": ("NVIDIA L40S", 46068),
}


def synthesize_report(*, gpu: str, count: int, seed: str, template: Path = H200_REPORT) -> bytes:
    """An ``nvidia-smi -q -x`` report of a host with ``count`` GPUs of kind ``gpu``."""
    product, memory_mib = PRODUCTS[gpu]
    root = ElementTree.parse(template, forbid_dtd=False).getroot()
    original = root.find("gpu")
    for existing in root.findall("gpu"):
        root.remove(existing)
    for index in range(count):
        element = copy.deepcopy(original)
        bus_id = f"00000000:{0x18 + index * 0x10:02X}:00.0"
        element.set("id", bus_id)
        element.find("product_name").text = product
        element.find("uuid").text = f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}/{index}')}"
        element.find("minor_number").text = str(index)
        element.find("pci/pci_bus_id").text = bus_id
        element.find("fb_memory_usage/total").text = f"{memory_mib} MiB"
        root.append(element)
    root.find("attached_gpus").text = str(count)
    return b'<?xml version="1.0" ?>\n' + StdElementTree.tostring(root)
