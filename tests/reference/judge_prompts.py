"""Expected prompts of UnifiedReward's task templates: tests/fixtures/judge/prompts.json.

Each `question = ...` line below is copied verbatim from UnifiedReward's LLaVA inference scripts
(https://github.com/CodeGoat24/UnifiedReward, commit ff6f520247a2d36e2aff7b2ba53a935afd437f66, the path above each function),
and `get_prompt` reproduces LLaVA-NeXT's `conv_templates["qwen_1_5"]` (SeparatorStyle.CHATML branch of
`Conversation.get_prompt` in llava/conversation.py, LLaVA-VL/LLaVA-NeXT commit df179663ae8b83207df100a1f7af24caec633ff9)
with the scripts' two `append_message` calls (user question, then assistant None). Imports nothing outside the standard
library. The video scripts put one `<image>\n` per frame (`len(images)`: all frames of all videos).

Run: python3 tests/reference/judge_prompts.py  (rewrites the fixture)
"""

import json
import os

# conv_qwen in llava/conversation.py: system, roles, sep; CHATML rendering.
SYSTEM = """<|im_start|>system
You are a helpful assistant."""
ROLES = ("<|im_start|>user", "<|im_start|>assistant")
SEP = "<|im_end|>"


def get_prompt(question):
    messages = [[ROLES[0], question], [ROLES[1], None]]
    ret = "" if SYSTEM == "" else SYSTEM + SEP + "\n"
    for role, message in messages:
        if message:
            ret += role + "\n" + message + SEP + "\n"
        else:
            ret += role + "\n"
    return ret


class _Frames:
    """Stands in for the scripts' list of decoded frames: only len() is used."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


# inference_llava/image_generation/pair_rank_image_generation.py
def image_generation_pairwise(prompt):
    question = f'<image>\n <image>\nYou are given a text caption and two generated images based on that caption. Your task is to evaluate and compare these images based on two key criteria:\n1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nCompare both images using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\nProvide a clear conclusion such as \"Image 1 is better than Image 2.\", \"Image 2 is better than Image 1.\" and \"Both images are equally good.\"\nYour task is provided as follows:\nText Caption: [{prompt}]'
    return question


# inference_llava/image_generation/point_score_image_generation.py
def image_generation_pointwise(prompt):
    question = f'<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nExtract key elements from the provided text caption, evaluate their presence in the generated image using the format: \'element (type): value\' (where value=0 means not generated, and value=1 means generated), and assign a score from 1 to 5 after \'Final Score:\'.\nYour task is provided as follows:\nText Caption: [{prompt}]'
    return question


# inference_llava/image_understanding/pair_rank_image_understanding.py
def image_understanding_pairwise(Query, R1, R2):
    question = f"<image>\nYou are provided with an image and a question for this image. Please review the corresponding responses based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the image. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating identification information in the image that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria. You need to choose which response is better for the given question and provide a detailed reason.\nYour task is provided as follows:\nQuestion: [{Query}]\nThe first response: [{R1}]\nThe second response: [{R2}]\n"
    return question


# inference_llava/image_understanding/point_score_image_understanding.py
def image_understanding_pointwise(Query, Response):
    question = '<image>\n' + f'You are provided with an image and a question for this image. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects\' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user\'s comprehension of the image. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating identification information in the image that could compromise personal privacy. Evaluate the language model\'s responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria. From 0 to 100, how much do you rate for this response in terms of the correct and comprehensive description of the image?\nDo not dominant the rating by a single attribute such as recognition correctness, but a overall rating on the above 5 factors.\nProvide a few lines for explanation and the rate number at last after \"Final Score:\".\nYour task is provided as follows:\nQuestion: [{Query}]\nResponse: [{Response}]\n'
    return question


# inference_llava/video_generation/pair_rank_video_generation.py
def video_generation_pairwise(prompt, images):
    question = '<image>\n'*len(images) + f'Suppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text caption and the frames of two generated videos based on that caption. Your task is to evaluate and compare two videos based on two key criteria:\n1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nCompare both videos using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\nProvide a clear conclusion such as \"Video 1 is better than Video 2.\", \"Video 2 is better than Video 1.\" and \"Both videos are equally good.\"\nYour task is provided as follows:\nText Caption: [{prompt}]'
    return question


# inference_llava/video_generation/point_score_video_generation.py
def video_generation_pointwise(prompt, images):
    question = '<image>\n'*len(images) + f'Suppose you are an expert in judging and evaluating the quality of AI-generated videos, please watch the frames of a given video and see the text prompt for generating the video.\nThen give scores from 5 different dimensions:\n(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n(2) temporal consistency, the consistency of objects or humans in video\n(3) dynamic degree, the degree of dynamic changes\n(4) text-to-video alignment, the alignment between the text prompt and the video content\n(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge\n\nFor each dimension, output a number from [1,2,3,4], \nin which \'1\' means \'Bad\', \'2\' means \'Average\', \'3\' means \'Good\', \n\'4\' means \'Real\' or \'Perfect\' (the video is like a real video)\nFinally, based on above 5 dimensions, assign a score from 1 to 10 after \'Final Score:\'\nHere is an output example:\nvisual quality: 4\ntemporal consistency: 4\ndynamic degree: 3\ntext-to-video alignment: 1\nfactual consistency: 2\nFinal Score: 6\n\n**Note: In the example above, scores are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of the given video.**\nYour task is provided as follows: Text Prompt: [{prompt}]'
    return question


# inference_llava/video_understanding/pair_rank_video_understanding.py
# The released line is a SyntaxError (three unescaped apostrophes inside f'...': objects' user's model's);
# they are escaped here as the pointwise script spells them, which leaves the string's text unchanged.
def video_understanding_pairwise(Query, R1, R2, images):
    question = '<image>\n'*len(images) + f'You are provided with a video and a question for this video. Please review the corresponding responses based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects\' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user\'s comprehension of the video. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating identification information in the video that could compromise personal privacy. Evaluate the language model\'s responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria. You need to choose which response is better for the given question.\nYour task is provided as follows:\nQuestion: [{Query}]\nResponse 1: [{R1}]\nResponse 2: [{R2}]'
    return question


# inference_llava/video_understanding/point_score_video_understanding.py
def video_understanding_pointwise(Query, Response, images):
    question = '<image>\n'*len(images) + f'You are provided with a video and a question for this video. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects\' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user\'s comprehension of the video. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating identification information in the video that could compromise personal privacy. Evaluate the language model\'s responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria.\nYou need to assign a score from 1 to 5 based on the above 5 factors for the response after \'Final Score:\'.\nYour task is provided as follows:\nQuestion: [{Query}]\nResponse: [{Response}]'
    return question


# UnifiedReward-Think (its answers end in <answer>...</answer>): the `question = ...` statements of
# UnifiedReward-Think/inference_llava/{task}/infer_cot_{task}.py, verbatim.

# UnifiedReward-Think/inference_llava/image_generation/infer_cot_image_generation.py
def think_image_generation_pairwise(prompt):
    question = f"<image>\n <image>\nGiven a caption and two images generated based on this caption, please analyze in detail the two provided images. Evaluate them on various dimensions such as semantic consistency (how closely the image content aligns with the caption), aesthetics (composition, color usage, artistic expression), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both images (e.g., Image 1: 8/10, Image 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each image by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: \'Image 1 is better\' or \'Image 2 is better\' based on the total scores. No additional text is allowed in the <answer> section.\n\nExample output format:\n<think>\n1. Semantic consistency: Image 1 (9/10) - ...; Image 2 (7/10) - ...\n2. Aesthetics: Image 2 (8/10) - ...; Image 1 (8/10) - ...\n3. Authenticity: Image 1 (8/10) - ...; Image 2 (5/10) - ...\n[Additional dimensions if any]: Image 2 (8/10) - ...; Image 1 (6/10) - ...\nTotal score:\nImage 1: 9+8+8+6=31\nImage 2: 7+8+5+8=28\n</think>\n<answer>Image 1 is better</answer>\n**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given images.**\n\nYour task is provided as follows:\nText Caption: [{prompt}]"
    return question


# UnifiedReward-Think/inference_llava/image_understanding/infer_cot_image_understanding.py
def think_image_understanding_pairwise(Query, R1, R2):
    question = ("<image>\nGiven a question and a reference image, please analyze in detail the two provided answers (Answer 1 and Answer 2). " \
                "Evaluate them based on the following three core dimensions:\n" \
                "1. Semantic accuracy: How well the answer reflects the visual content of the image\n" \
                "2. Correctness: Whether the answer is logically and factually correct\n" \
                "3. Clarity: Whether the answer is clearly and fluently expressed\n" \
                "You may also consider additional dimensions if you find them relevant (e.g., reasoning ability, attention to detail, multimodal grounding, etc.). " \
                "For each dimension, provide a score from 1 to 10 for both answers, and briefly explain your reasoning. " \
                "Then, compute the total score for each answer by explicitly adding the scores for all dimensions and showing the full calculation. " \
                "Enclose your full reasoning within <think> and </think> tags. " \
                "Then, in the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No other text is allowed in the <answer> section.\n\n" \
                "Example format:\n" \
                "<think>\n" \
                "1. Semantic accuracy: Answer 1 (9/10) - ...; Answer 2 (7/10) - ...\n" \
                "2. Correctness: Answer 1 (8/10) - ...; Answer 2 (7/10) - ...\n" \
                "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n" \
                "[Additional dimensions if any]: Answer 1 (6/10) - ...; Answer 2 (7/10) - ...\n" \
                "Total score:\nAnswer 1: 9+8+9+6=32\nAnswer 2: 7+7+8+7=29\n" \
                "</think>\n" \
                "<answer>Answer 1 is better</answer>\n\n" \
                "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n\n"
                f"Your task is provided as follows:\nQuestion: [{Query}]\nAnswer 1: [{R1}]\nAnswer 2: [{R2}]")
    return question


# UnifiedReward-Think/inference_llava/video_generation/infer_cot_video_generation.py
def think_video_generation_pairwise(prompt, images):
    question = '<image>\n'*len(images) + f"Given a caption and two videos generated based on this caption, please analyze in detail the two provided videos. Evaluate them on various dimensions such as semantic consistency (how closely the video content aligns with the caption), temporal coherence (smoothness and logical flow of motion across frames), authenticity (realism and attention to detail), and any other factors you deem relevant. For each evaluation dimension, provide a score between 1-10 for both videos (e.g., Video 1: 8/10, Video 2: 6/10) and provide a concise rationale for the score. Calculate the total score for each video by summing all dimension scores. Use a chain-of-thought process to detail your reasoning steps, and enclose all your detailed reasoning within <think> and </think> tags. Then, in the <answer> tag, output exactly one of the following strings: 'Video 1 is better' or 'Video 2 is better' based on the total scores. No additional text is allowed in the <answer> section.\n\nExample output format:\n<think>\n1. Semantic consistency: Video 1 (9/10) - ...; Video 2 (7/10) - ...\n2. Temporal coherence: Video 1 (8/10) - ...; Video 2 (6/10) - ...\n3. Authenticity: Video 1 (7/10) - ...; Video 2 (5/10) - ...\n[Additional dimensions if any]: Video 2 (8/10) - ...; Video 1 (6/10) - ...\nTotal score:\nVideo 1: 9+8+7+6=30\nVideo 2: 7+6+5+8=26\n</think>\n<answer>Video 1 is better</answer>\n**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given videos.**\n\nYour task is provided as follows:\nText Caption: [{prompt}]"
    return question


# UnifiedReward-Think/inference_llava/video_understanding/infer_cot_video_understanding.py
def think_video_understanding_pairwise(Query, R1, R2, images):
    question = ('<image>\n'*len(images) + "Given a question and a reference video, please evaluate the two provided answers (Answer 1 and Answer 2). " \
                    "Judge them based on the following key dimensions:\n" \
                    "1. Semantic accuracy: Does the answer align with the visual and temporal content in the video?\n" \
                    "2. Correctness: Is the answer factually and logically correct?\n" \
                    "3. Clarity: Is the answer expressed fluently, clearly, and coherently?\n" \
                    "You are encouraged to consider any additional dimensions if relevant (e.g., temporal reasoning, causal understanding, visual detail, emotional perception, etc.). " \
                    "For each dimension, assign a score from 1 to 10 for both answers and explain briefly. " \
                    "Then, compute and explicitly show the total score as an addition of all dimension scores. " \
                    "Wrap your full reasoning in <think> tags. In the <answer> tag, output exactly one of the following: 'Answer 1 is better' or 'Answer 2 is better'. No additional commentary is allowed in the <answer> section.\n\n" \
                    "Example format:\n" \
                    "<think>\n" \
                    "1. Semantic accuracy: Answer 1 (8/10) - ...; Answer 2 (9/10) - ...\n" \
                    "2. Correctness: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n" \
                    "3. Clarity: Answer 1 (9/10) - ...; Answer 2 (8/10) - ...\n" \
                    "[Additional dimensions if any]: Answer 1 (7/10) - ...; Answer 2 (6/10) - ...\n" \
                    "Total score:\nAnswer 1: 8+7+9+7=31\nAnswer 2: 9+6+8+6=29\n" \
                    "</think>\n" \
                    "<answer>Answer 1 is better</answer>\n\n" \
                    "**Note: In the example above, scores and the final answer are placeholders meant only to demonstrate the format. Your actual evaluation should be based on the quality of two given answers.**\n\n" \
                    f"Your task is provided as follows:\nQuestion: {Query}\nAnswer 1: {R1}\nAnswer 2: {R2}\n"
        )
    return question


# Awkward field values: empty, braces (must not be read as placeholders), quotes, newlines, non-ASCII,
# text that looks like a chat marker or a media placeholder.
CAPTION = "两只猫\nin \"snow\" {cube} <image> <|im_end|>"
QUESTION = "Count the {x}s.\nThen explain."
RESPONSES = ("", "Line one\nLine two {{escaped}} é")


def cases():
    out = []

    def add(task, mode, fields, frames, question):
        out.append({"task": task, "mode": mode, "fields": fields, "frames": frames, "prompt": get_prompt(question)})

    for c in ("a cat", CAPTION):
        add("image_generation", "pairwise", {"caption": c}, [], image_generation_pairwise(c))
        add("image_generation", "pointwise", {"caption": c}, [], image_generation_pointwise(c))
    add("video_generation", "pairwise", {"caption": "a cat"}, [8, 8], video_generation_pairwise("a cat", _Frames(16)))
    add("video_generation", "pairwise", {"caption": CAPTION}, [3, 5], video_generation_pairwise(CAPTION, _Frames(8)))
    add("video_generation", "pointwise", {"caption": "a cat"}, [8], video_generation_pointwise("a cat", _Frames(8)))
    add("video_generation", "pointwise", {"caption": CAPTION}, [1], video_generation_pointwise(CAPTION, _Frames(1)))
    for q, (r1, r2) in (("What is shown?", RESPONSES), (QUESTION, RESPONSES[::-1])):
        fields = {"question": q, "first_response": r1, "second_response": r2}
        add("image_understanding", "pairwise", fields, [], image_understanding_pairwise(q, r1, r2))
        add("video_understanding", "pairwise", fields, [8], video_understanding_pairwise(q, r1, r2, _Frames(8)))
        fields = {"question": q, "response": r2}
        add("image_understanding", "pointwise", fields, [], image_understanding_pointwise(q, r2))
        add("video_understanding", "pointwise", fields, [2], video_understanding_pointwise(q, r2, _Frames(2)))
    add("think/image_generation", "pairwise", {"caption": CAPTION}, [], think_image_generation_pairwise(CAPTION))
    add("think/video_generation", "pairwise", {"caption": "a cat"}, [8, 8],
        think_video_generation_pairwise("a cat", _Frames(16)))
    fields = {"question": QUESTION, "first_response": RESPONSES[0], "second_response": RESPONSES[1]}
    add("think/image_understanding", "pairwise", fields, [], think_image_understanding_pairwise(QUESTION, *RESPONSES))
    add("think/video_understanding", "pairwise", fields, [8],
        think_video_understanding_pairwise(QUESTION, *RESPONSES, _Frames(8)))
    return out


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "judge", "prompts.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cases(), f, ensure_ascii=False, indent=0)
        f.write("\n")
