//! `ur_judge_set_template`: a user's task template (a file, or its JSON text, in the schema of `templates/*.json`)
//! replacing the judge's template of one task × mode, as `unireward judge --template` does.

use std::ffi::c_char;
use std::path::Path;

use super::context::{code, read_config, size_of_u32, text, Config, Versioned};
use super::judge::{handle_mut, ur_judge, MODES, TASKS, UR_JUDGE_PAIRWISE, UR_TASK_IMAGE_GENERATION};
use super::status::{call, ur_status, Failure, FfiResult};
use crate::judge::{AnswerClasses, TaskTemplate};

/// A template for `ur_judge_set_template`: which task × mode it is for, and where it is — a file (`path`) or the
/// file's text (`json`), exactly one of them. Initialise with `ur_judge_template_default()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ur_judge_template {
    /// `sizeof(ur_judge_template)`.
    pub struct_size: u32,
    /// `UR_TASK_*` and `UR_JUDGE_PAIRWISE` / `_POINTWISE`: must be the template's own `task` and `mode`.
    pub task: i32,
    pub mode: i32,
    /// Set to 0.
    pub reserved: i32,
    /// The template file's path, NUL-terminated UTF-8; NULL when `json` is given.
    pub path: *const c_char,
    /// The template's JSON text, NUL-terminated UTF-8; NULL when `path` is given.
    pub json: *const c_char,
}

impl Versioned for ur_judge_template {
    const NAME: &'static str = "ur_judge_template";
}

impl Config for ur_judge_template {
    fn default_value() -> Self {
        ur_judge_template {
            struct_size: size_of_u32::<Self>(),
            task: UR_TASK_IMAGE_GENERATION,
            mode: UR_JUDGE_PAIRWISE,
            reserved: 0,
            path: std::ptr::null(),
            json: std::ptr::null(),
        }
    }
}

/// Image generation, pairwise, neither a path nor a text yet.
#[no_mangle]
pub extern "C" fn ur_judge_template_default() -> ur_judge_template {
    ur_judge_template::default_value()
}

/// The template `t` describes, read and validated.
///
/// # Safety
/// `t.path` and `t.json` are NULL or NUL-terminated.
unsafe fn read_template(t: &ur_judge_template) -> FfiResult<TaskTemplate> {
    let task = code("user_template->task", t.task, &TASKS)?;
    let mode = code("user_template->mode", t.mode, &MODES)?;
    let template = match (t.path.is_null(), t.json.is_null()) {
        // SAFETY: this function's contract.
        (false, true) => TaskTemplate::from_file(Path::new(&unsafe { text("user_template->path", t.path) }?))?,
        // SAFETY: this function's contract.
        (true, false) => {
            TaskTemplate::from_json(&unsafe { text("user_template->json", t.json) }?, "`user_template->json`")?
        }
        (true, true) => {
            let message = "`user_template->path` and `user_template->json` are both NULL: give one of them";
            return Err(Failure::new(ur_status::UR_ERROR_NULL_POINTER, message));
        }
        (false, false) => {
            return Err(Failure::invalid(
                "`user_template->path` and `user_template->json` are both set: give one of them",
            ))
        }
    };
    if (template.task, template.mode) != (task, mode) {
        return Err(Failure::invalid(format!(
            "`user_template->task` and `user_template->mode` say {task}.{mode}, the template is {}.{}",
            template.task, template.mode
        )));
    }
    Ok(template)
}

/// Judges `user_template->task` × `user_template->mode` with the user's template from now on (until the judge is
/// freed or another template replaces it), instead of the checkpoint's or the built-in one: a file
/// (`user_template->path`) or its text (`user_template->json`) in the schema of the repository's `templates/*.json`
/// (the instruction with its fields and media placeholders, the answer grammar). The template is read, validated (its
/// own `task` and `mode` must be the ones given; its answer phrases or score values must tokenize) and only then
/// replaces the old one; on failure the judge is unchanged.
///
/// # Safety
/// `judge` comes from `ur_judge_load` (and no other call is using it); `user_template` is NULL (an error) or a readable
/// `ur_judge_template` of its `struct_size` whose strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ur_judge_set_template(
    judge: *mut ur_judge,
    user_template: *const ur_judge_template,
) -> ur_status {
    // SAFETY (whole body): this function's contract.
    call(|| unsafe {
        let handle = handle_mut(judge)?;
        if user_template.is_null() {
            return Err(Failure::null("user_template"));
        }
        let renamed =
            |f: Failure| Failure { message: f.message.replace("`ur_judge_template.", "`user_template->"), ..f };
        let template = read_template(&read_config(user_template).map_err(renamed)?)?;
        AnswerClasses::for_grammar(&template.answer, &handle.judge.tokenizer)?;
        handle.judge.set_template(template);
        Ok(())
    })
}
