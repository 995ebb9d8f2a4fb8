//! The tutorial's numbers on the shipped corpus.

use charrnn_core::data::vocab::Vocab;
use charrnn_core::data::{split_validation, EpochBatches, Sequences};
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn shakespeare_gives_the_tutorials_counts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.chars().count(), 1_115_394);
    let vocab = Vocab::from_text(&text);
    assert_eq!(vocab.len(), 65);
    let ids = vocab.encode(&text).unwrap();
    let (train, val) = split_validation(&ids, 0.0);
    assert!(val.is_empty());
    let seqs = Sequences::new(train, 100);
    assert_eq!(seqs.len(), 11_043);
    let batches: Vec<_> = EpochBatches::new(seqs.len(), 64, 10_000, StdRng::seed_from_u64(0)).collect();
    assert_eq!(batches.len(), 172);
    // The first sequence, as the tutorial prints it.
    let first = seqs.batch(&[0]);
    assert_eq!(vocab.decode(&first.inputs[..13]), "First Citizen");
    assert_eq!(vocab.decode(&first.targets[..13]), "irst Citizen:");
}

/// The token cache gives the pipeline exactly what the text in memory gives: the same
/// vocabulary, ids, checksum, and batches of every kind.
#[test]
fn shakespeare_through_the_token_cache_is_the_same_pipeline() {
    use charrnn_core::data::cache::{prepare, CacheOptions};
    use charrnn_core::data::Lanes;
    use sha2::{Digest, Sha256};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let vocab = Vocab::from_text(&text);
    let ids = vocab.encode(&text).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let options = CacheOptions {
        dir: Some(cache.path().to_path_buf()),
        separator: "\n\n".into(),
        skip_invalid: false,
        base: None,
    };
    let corpus = prepare(&path.to_path_buf().into(), &options, &mut charrnn_core::notice::ignore).unwrap();
    assert_eq!(corpus.vocab, vocab);
    assert_eq!(corpus.sha256, format!("{:x}", Sha256::digest(text.as_bytes())));
    assert_eq!(corpus.ids().to_vec(), ids);
    let (a_train, a_val) = split_validation(&ids, 0.1);
    let (b_train, b_val) = split_validation(corpus.ids(), 0.1);
    assert_eq!((a_train.to_vec(), a_val.to_vec()), (b_train.to_vec(), b_val.to_vec()));
    let (a, b) = (Sequences::new(a_train, 100), Sequences::new(b_train, 100));
    for order in EpochBatches::new(a.len(), 64, 10_000, StdRng::seed_from_u64(3)).take(20) {
        assert_eq!(a.batch(&order), b.batch(&order));
    }
    let (a, b) = (Lanes::new(a_train, 64, 100), Lanes::new(b_train, 64, 100));
    for k in [0, 1, a.len() - 1] {
        assert_eq!(a.batch(k), b.batch(k));
    }
    // A second preparation reads the cache it wrote.
    let again = prepare(&path.to_path_buf().into(), &options, &mut charrnn_core::notice::ignore).unwrap();
    assert_eq!(again.ids().to_vec(), ids);
}
