"""Stack- and memo-heavy seeds for the pth and image fuzz targets (run from the repository
root: python fuzz/seeds/make_seeds.py; writes fuzz/corpus/*/seed_*)."""
import io
import os
import struct
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def pth(pickle, storages=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/byteorder", b"little")
        for key, data in storages:
            z.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def s(x):
    return b"X" + struct.pack("<I", len(x)) + x.encode()


def tensor(key, numel, offset, shape, stride):
    ints = lambda xs: b"(" + b"".join(b"\x8a\x08" + struct.pack("<q", v) for v in xs) + b"t"
    pid = b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s(key) + s("cpu") + b"\x8a\x08" + struct.pack("<q", numel) + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"\x8a\x08" + struct.pack("<q", offset)
            + ints(shape) + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR")


seeds = {
    "pth/seed_deep_tuples": pth(b"\x80\x02" + b"(" * 5000 + b"t" * 5000 + b"."),
    "pth/seed_deep_lists": pth(b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."),
    "pth/seed_memo_doubling": pth(b"\x80\x02]" + b"q\x00h\x00h\x00\x86" * 60 + b"."),
    "pth/seed_stride0": pth(b"\x80\x02}(" + s("w") + tensor("0", 1, 0, [1 << 20, 1 << 20], [0, 0]) + b"u.", [("0", b"\0" * 4)]),
    "pth/seed_shared_views": pth(b"\x80\x02}(" + b"".join(s(f"w{i}") + tensor("0", 64, i, [8, 7], [8, 1]) for i in range(8)) + b"u.",
                                 [("0", b"\0" * 256)]),
}
for rel, data in seeds.items():
    path = os.path.join(ROOT, "corpus", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
print(len(seeds), "seeds")
