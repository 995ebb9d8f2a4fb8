//! The tutorial's numbers on the shipped corpus.

use charrnn::data::vocab::Vocab;
use charrnn::data::{epoch_batches, read_corpus, split_validation, Sequences};
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn shakespeare_gives_the_tutorials_counts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt");
    let text = read_corpus(&path).unwrap();
    assert_eq!(text.chars().count(), 1_115_394);
    let vocab = Vocab::from_text(&text);
    assert_eq!(vocab.len(), 65);
    let ids = vocab.encode(&text).unwrap();
    let (train, val) = split_validation(&ids, 0.0);
    assert!(val.is_empty());
    let seqs = Sequences::new(train, 100);
    assert_eq!(seqs.len(), 11_043);
    let batches = epoch_batches(seqs.len(), 64, 10_000, &mut StdRng::seed_from_u64(0));
    assert_eq!(batches.len(), 172);
    // The first sequence, as the tutorial prints it.
    let first = seqs.batch(&[0]);
    assert_eq!(vocab.decode(&first.inputs[..13]), "First Citizen");
    assert_eq!(vocab.decode(&first.targets[..13]), "irst Citizen:");
}
