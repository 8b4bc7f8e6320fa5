//! Benchmark metrics on small hand-computed examples (the arithmetic is written beside each expectation).

use unireward::judge::answer::Verdict::{self, First, Second, Tie};
use unireward::judge::metrics::{
    expected_calibration_error, pairwise_accuracy, position_consistency, vl_reward_bench_accuracy, VlCategory,
};
use unireward::Error;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn genai_bench_tau_counts_ties_as_a_class_and_diff_drops_tie_ground_truths() {
    let records: [(Verdict, Option<Verdict>); 7] = [
        (First, Some(First)),   // right
        (Second, Some(First)),  // wrong
        (Tie, Some(Tie)),       // right, a tie
        (Tie, Some(Second)),    // wrong, a tie
        (Second, Some(Tie)),    // wrong: predicting a tie for a non-tie stays wrong in `diff`
        (First, None),          // wrong, unparsable
        (Second, Some(Second)), // right
    ];
    let acc = pairwise_accuracy(&records);
    assert_eq!((acc.total, acc.correct, acc.ties, acc.correct_ties, acc.unparsable), (7, 3, 2, 1, 1));
    assert!(close(acc.tau, 3.0 / 7.0), "{acc:?}");
    assert!(close(acc.diff, (3.0 - 1.0) / (7.0 - 2.0)), "{acc:?}");
    let only_ties = pairwise_accuracy(&[(Tie, Some(Tie))]);
    assert_eq!((only_ties.tau, only_ties.diff), (Some(1.0), None));
    assert_eq!(pairwise_accuracy(&[]).tau, None);
}

#[test]
fn vl_reward_bench_reports_categories_overall_and_macro_average() {
    use VlCategory::*;
    let records = [
        (General, First, Some(First)),
        (General, Second, Some(First)),
        (Hallucination, Second, Some(Second)),
        (Hallucination, First, Some(First)),
        (Hallucination, First, None),
        (Reasoning, First, Some(Second)),
    ];
    let acc = vl_reward_bench_accuracy(&records);
    let per: Vec<_> = acc.categories.iter().map(|c| (c.correct, c.total)).collect();
    assert_eq!(per, [(1, 2), (2, 3), (0, 1)]);
    assert_eq!((acc.overall.correct, acc.overall.total, acc.unparsable), (3, 6, 1));
    assert!(close(acc.overall.accuracy, 0.5));
    assert!(close(acc.macro_average, (1.0 / 2.0 + 2.0 / 3.0 + 0.0) / 3.0), "{acc:?}");
    // The macro average needs every category.
    assert_eq!(vl_reward_bench_accuracy(&records[..5]).macro_average, None);
    assert_eq!(VlCategory::from_subset("rlaif-v").unwrap(), Hallucination);
    assert_eq!(VlCategory::from_subset("wildvision-battle").unwrap(), General);
    assert_eq!(VlCategory::from_subset("mmmu").unwrap(), Reasoning);
    let err = VlCategory::from_subset("coco").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("`coco`"));
}

#[test]
fn position_consistency_compares_a_pair_with_its_swap() {
    let records = [
        (Some(First), Some(Second)), // consistent
        (Some(Tie), Some(Tie)),      // consistent
        (Some(First), Some(First)),  // position bias: always the first shown
        (None, None),                // unparsable: never consistent
        (Some(Second), None),
    ];
    let c = position_consistency(&records);
    assert_eq!((c.correct, c.total), (2, 5));
    assert!(close(c.accuracy, 0.4));
}

#[test]
fn expected_calibration_error_on_four_bins() {
    // Bins (0, .25], (.25, .5], (.5, .75], (.75, 1]. Predictions (argmax; the first on equal probabilities):
    // a: First 0.9 right, b: Second 0.8 wrong            -> bin 3: conf 0.85, acc 0.5, gap 0.35
    // c: First 0.4 right, d: First 0.5 wrong, e: Tie 0.5 right -> bin 1: conf 1.4/3, acc 2/3, gap 0.2
    // f: First 0.6 right                                  -> bin 2: conf 0.6, acc 1, gap 0.4
    // ECE = (2 · 0.35 + 3 · 0.2 + 1 · 0.4) / 6 = 1.7 / 6.
    let records = [
        ([0.9, 0.05, 0.05], First),
        ([0.2, 0.8, 0.0], First),
        ([0.4, 0.3, 0.3], First),
        ([0.5, 0.5, 0.0], Second),
        ([0.25, 0.25, 0.5], Tie),
        ([0.6, 0.4, 0.0], First),
    ];
    let cal = expected_calibration_error(&records, 4).unwrap();
    assert!(close(cal.ece, 1.7 / 6.0), "{cal:?}");
    let counts: Vec<_> = cal.bins.iter().map(|b| b.count).collect();
    assert_eq!(counts, [0, 3, 1, 2]);
    assert!(close(cal.bins[1].accuracy, 2.0 / 3.0) && close(cal.bins[3].mean_confidence, 0.85));
    assert_eq!(cal.bins[0].accuracy, None);

    // Edges: 0.3 belongs to (0.2, 0.3] although 0.3 · 10 rounds up past 3; 1.0 to the last bin, 0.0 to the first.
    let edges = [([0.3, 0.7, 0.0], Second), ([1.0, 0.0, 0.0], First), ([0.0, 0.0, 0.0], First)];
    let cal = expected_calibration_error(&edges[..1], 10).unwrap();
    assert_eq!(cal.bins[6].count, 1, "0.7 is in (0.6, 0.7]");
    let cal = expected_calibration_error(&[([0.3, 0.3, 0.3], First)], 10).unwrap();
    assert_eq!(cal.bins[2].count, 1, "0.3 is in (0.2, 0.3]");
    let cal = expected_calibration_error(&edges[1..], 10).unwrap();
    assert_eq!((cal.bins[9].count, cal.bins[0].count), (1, 1));
    assert!(close(cal.ece, 0.5 * 0.0 + 0.5 * 1.0), "{cal:?}");

    assert_eq!(expected_calibration_error(&[], 10).unwrap().ece, None);
    for bad in [[f64::NAN, 0.5, 0.5], [1.5, 0.0, 0.0], [-0.1, 0.5, 0.5]] {
        let err = expected_calibration_error(&[([0.5, 0.5, 0.0], First), (bad, First)], 10).unwrap_err();
        assert!(err.to_string().contains("record 1"), "{err}");
    }
    assert!(expected_calibration_error(&records, 0).is_err());
}
