//! The answer parser on a table of real-looking answers, with the built-in templates' grammars.

use unireward::judge::answer::{parse_answer, AnswerError, Judgment, Verdict};
use unireward::judge::{Mode, Task, TaskTemplate, Variant};

#[derive(Clone)]
enum Expect {
    Verdict(Verdict),
    Score(f64),
    Unparsable,
    OutOfScale(f64),
    ScaleMismatch,
}

fn check(task: Task, mode: Mode, answer: &str, expect: Expect) {
    let grammar = TaskTemplate::built_in(task, mode).unwrap().answer;
    let got = parse_answer(answer, &grammar);
    let ok = match (&expect, &got) {
        (Expect::Verdict(v), Ok(Judgment::Verdict(g))) => v == g,
        (Expect::Score(s), Ok(Judgment::Score(g))) => s == g,
        (Expect::Unparsable, Err(AnswerError::Unparsable(_))) => true,
        (Expect::OutOfScale(s), Err(AnswerError::OutOfScale { score, .. })) => s == score,
        (Expect::ScaleMismatch, Err(AnswerError::ScaleMismatch { .. })) => true,
        _ => false,
    };
    assert!(ok, "{task}.{mode}: {answer:?} gave {got:?}");
}

#[test]
fn pairwise_verdicts_are_found_anywhere_and_the_last_one_counts() {
    use Expect::Verdict as V;
    use Task::*;
    use Verdict::*;
    let table: &[(Task, &str, Expect)] = &[
        (ImageGeneration, "Image 1 is better than Image 2.", V(First)),
        (ImageGeneration, "Both images are equally good.", V(Tie)),
        (ImageGeneration, "both images   are\nequally GOOD", V(Tie)),
        (ImageGeneration, "The caption asks for a red cube. Image 2 shows it sharply, Image 1 is blurry.\nImage 2 is better than Image 1.", V(Second)),
        (ImageGeneration, "At first glance Image 1 is better than Image 2, but on closer inspection of the hands, Image 2 is better than Image 1.", V(Second)),
        (ImageGeneration, "**Conclusion:** Image 1 is better than Image 2", V(First)),
        (ImageGeneration, "Image 1 is not better than Image 2.", Expect::Unparsable),
        (ImageGeneration, "Final", Expect::Unparsable),
        (ImageGeneration, "", Expect::Unparsable),
        (VideoGeneration, "Video 2 is better than Video 1.", V(Second)),
        (VideoGeneration, "Both videos are equally good.", V(Tie)),
        (VideoGeneration, "Image 1 is better than Image 2.", Expect::Unparsable),
        (ImageUnderstanding, "Response 1 accurately counts the dogs; Response 2 invents a cat. Response 1 is better.", V(First)),
        (ImageUnderstanding, "The second response is better because it mentions the sign.", V(Second)),
        (ImageUnderstanding, "Overall Judgment: Answer 2 is better than Answer 1.", V(Second)),
        (ImageUnderstanding, "Both responses are equally good.", Expect::Unparsable),
        (VideoUnderstanding, "Response 1 is better than Response 2.", V(First)),
    ];
    for (task, answer, expect) in table {
        check(*task, Mode::Pairwise, answer, expect.clone());
    }
}

#[test]
fn pointwise_scores_are_numbers_after_the_last_prefix_within_the_scale() {
    use Expect::*;
    use Task::*;
    let table: Vec<(Task, &str, Expect)> = vec![
        (VideoGeneration, "Final Score: 10", Score(10.0)),
        (VideoGeneration, "Final Score: 9", Score(9.0)),
        (VideoGeneration, "final score:7/10", Score(7.0)),
        (VideoGeneration, "FINAL SCORE :  8", Score(8.0)),
        (VideoGeneration, "**Final Score:** 6", Score(6.0)),
        (VideoGeneration, "visual quality: 4\ntemporal consistency: 4\ndynamic degree: 3\ntext-to-video alignment: 1\nfactual consistency: 2\nFinal Score: 6", Score(6.0)),
        (VideoGeneration, "Final Score: 3. On reflection the motion is smooth. Final Score: 5", Score(5.0)),
        (VideoGeneration, "Final Score: 7 8", Score(7.0)),
        (VideoGeneration, "Final Score: 4.5", Score(4.5)),
        (VideoGeneration, "Final", Unparsable),
        (VideoGeneration, "Final Score:", Unparsable),
        (VideoGeneration, "Final Score: N/A", Unparsable),
        (VideoGeneration, "The video deserves a 7.", Unparsable),
        (VideoGeneration, "Final Score: 11", OutOfScale(11.0)),
        (VideoGeneration, "Final Score: 0", OutOfScale(0.0)),
        (VideoGeneration, "Final Score: 4/5", ScaleMismatch),
        (ImageGeneration, "cat (object): 1\nred (attribute): 0\nFinal Score: 3", Score(3.0)),
        (ImageGeneration, "Final Score: 7/10", ScaleMismatch),
        (ImageGeneration, "Final Score: 6", OutOfScale(6.0)),
        (ImageUnderstanding, "The response describes the scene well but misses the dog.\nFinal Score: 85", Score(85.0)),
        (ImageUnderstanding, "Final Score: 0", Score(0.0)),
        (ImageUnderstanding, "Final Score: 100", Score(100.0)),
        (ImageUnderstanding, "Final Score: 100000000000000000000", OutOfScale(1e20)),
        (VideoUnderstanding, "Final Score: 5", Score(5.0)),
        (VideoUnderstanding, "Final Score: -2", OutOfScale(-2.0)),
    ];
    for (task, answer, expect) in table {
        check(task, Mode::Pointwise, answer, expect);
    }
}

#[test]
fn think_verdicts_are_read_inside_the_last_answer_tag() {
    let grammar = |task| TaskTemplate::built_in_variant(Variant::Think, task, Mode::Pairwise).unwrap().answer;
    let image = grammar(Task::ImageGeneration);
    let answer = "<think>\n1. Semantic consistency: Image 1 (9/10); Image 2 (7/10). At first Image 1 is better, but\n\
                  Total score:\nImage 1: 9+6=15\nImage 2: 7+9=16\n</think>\n<answer>Image 2 is better</answer>";
    assert_eq!(parse_answer(answer, &image), Ok(Judgment::Verdict(Verdict::Second)));
    // Reasoning that names a verdict but an empty answer tag: the tag decides, so it is unparsable.
    let empty = "<think>Image 1 is better</think>\n<answer></answer>";
    assert!(matches!(parse_answer(empty, &image), Err(AnswerError::Unparsable(_))));
    let understanding = grammar(Task::VideoUnderstanding);
    let answer = "<think>Answer 2 misses the dog.</think>\n<answer>Answer 1 is better</answer>";
    assert_eq!(parse_answer(answer, &understanding), Ok(Judgment::Verdict(Verdict::First)));
}

#[test]
fn errors_say_what_was_looked_for() {
    let grammar = TaskTemplate::built_in(Task::ImageGeneration, Mode::Pairwise).unwrap().answer;
    let message = parse_answer("Final", &grammar).unwrap_err().to_string();
    assert!(message.starts_with("unparsable answer") && message.contains("Both images are equally good"), "{message}");
    let grammar = TaskTemplate::built_in(Task::VideoGeneration, Mode::Pointwise).unwrap().answer;
    let message = parse_answer("Final Score: 12", &grammar).unwrap_err().to_string();
    assert_eq!(message, "score 12 is outside the scale 1..=10");
}
