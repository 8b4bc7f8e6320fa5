//! What the tests on the demo's world share: the words of the demo's templates (a world tokenizer's base corpus).

/// Every instruction and verdict phrase of the demo's templates.
pub fn demo_templates_words() -> Vec<String> {
    use unireward::judge::{AnswerGrammar, Mode, Task, TaskTemplate, Variant};
    let mut corpus = Vec::new();
    for task in Task::ALL {
        for mode in Mode::ALL {
            let template = TaskTemplate::built_in_variant(Variant::Demo, task, mode).unwrap();
            corpus.push(template.instruction.clone());
            if let AnswerGrammar::Verdict(v) = &template.answer {
                corpus.extend(v.first.iter().chain(&v.second).chain(&v.tie).cloned());
            }
        }
    }
    corpus
}
