//! Legacy (pre-zip) `torch.save` files: recognised by their first bytes, read with the same
//! restrictions as the zip format, and holding the same tensors. Fixtures:
//! `tests/fixtures/hostile/make_hostile.py`.

mod common;

use convnet::weights::{WeightFile, WeightFormat};

#[test]
fn a_legacy_file_is_detected_as_pth_and_holds_the_zip_files_tensors() {
    let bytes = std::fs::read(common::fixture("hostile/resnet18_legacy.pth")).unwrap();
    assert_eq!(WeightFormat::detect(&bytes), WeightFormat::Pth);
    let legacy = WeightFile::open(common::fixture("hostile/resnet18_legacy.pth")).unwrap();
    let zip = WeightFile::open(common::fixture("torch_resnet18_w8/resnet18.pth")).unwrap();
    assert_eq!(legacy.format(), "PyTorch .pth");
    assert_eq!(legacy.len(), zip.len());
    assert_eq!(
        legacy.len(),
        102,
        "ResNet18's 122 state_dict entries less its 20 num_batches_tracked"
    );
    for k in zip.keys() {
        assert_eq!(legacy.get(k), zip.get(k), "{k}");
    }
}

#[test]
fn views_sharing_a_storage_read_as_pytorch_made_them_in_both_formats() {
    let mut want = common::npz("hostile/views_expected.npz");
    for file in ["hostile/views_legacy.pth", "hostile/views_zip.pth"] {
        let w = WeightFile::open(common::fixture(file)).unwrap();
        for key in ["whole", "transposed", "row", "columns", "double"] {
            let expected = common::npz_array(&mut want, key).unwrap();
            let got = w.get(key).unwrap_or_else(|| panic!("{file}: no {key}"));
            assert_eq!(got.shape, expected.shape(), "{file}: {key}");
            assert_eq!(got.data, expected.iter().copied().collect::<Vec<_>>(), "{file}: {key}");
        }
    }
}

#[test]
fn a_truncated_legacy_file_is_a_typed_error_at_every_length() {
    let bytes = std::fs::read(common::fixture("hostile/views_legacy.pth")).unwrap();
    for n in 0..bytes.len() {
        let r = std::panic::catch_unwind(|| WeightFile::from_bytes_as(bytes[..n].to_vec(), "cut.pth", WeightFormat::Pth));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("cut at {n} of {} loaded", bytes.len()),
            Err(_) => panic!("cut at {n} panicked"),
        }
    }
}
