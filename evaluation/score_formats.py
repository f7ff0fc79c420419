"""The tasks `evaluation.score` scores and the input format of each, in words.

Kept free of heavy imports: `beit3 score --help` prints these texts without loading torch. The scorers
(`evaluation.score`, `evaluation.score_retrieval`) implement exactly what is written here.
"""

TASKS = (
    "vqav2",
    "coco_captioning",
    "nocaps",
    "nlvr2",
    "imagenet",
    "coco_retrieval",
    "flickr30k_retrieval",
    "ade20k",
    "coco_detection",
)

FORMATS = {
    "vqav2": (
        "predictions = the EvalAI submission JSON, a list of {question_id, answer}; annotations = "
        "v2_mscoco_{train,val}2014_annotations.json; optional questions = v2_OpenEnded_mscoco_*_questions.json, "
        "which narrows scoring to its questions (each must be annotated with the same image id). Official VQA "
        "accuracy of GT-Vision-Lab vqaEval.py, by default the current script (revision 2021, commit a013f00 "
        "'Fixed processing answers bug': when the ten answers disagree, answers and prediction are both "
        "normalised); --vqa-eval-revision 2017 follows the script of the v2.0 release. Prints overall, "
        "per_answer_type, per_question_type (percent, 2 decimals), num_questions and vqa_eval_revision."
    ),
    "coco_captioning": (
        "predictions = a JSON list of {image_id, caption}, one per annotated image; annotations = COCO caption "
        "format {images: [{id}], annotations: [{image_id, caption}]} (e.g. coco_karpathy_test_gt.json). Prints "
        "BLEU_1..BLEU_4, METEOR, ROUGE_L, CIDEr (pycocoevalcap), num_images, note (SPICE is not computed)."
    ),
    "nocaps": (
        "as coco_captioning, with annotations = nocaps_val_4500_captions.json, whose images carry 'domain'; "
        "adds 'domains' with per-domain CIDEr."
    ),
    "nlvr2": (
        "predictions = the official CSV 'identifier,prediction' (.csv; an 'identifier,...' header line is "
        "skipped) or a JSON list / JSON Lines of {identifier, label}; annotations = the official JSON Lines "
        "file (dev.json, test1.json). As in the official metrics.py, a CSV line is stripped and split on "
        "commas (fields are not stripped or unquoted), and a prediction is right when it equals the label up "
        "to case: True/true/TRUE (or a JSON bool) count, while ' True', '1', 0 or 'yes' count as wrong; their "
        "number is printed as num_unrecognised_labels and logged. Prints accuracy, consistency (percent), "
        "num_examples, num_sentences, num_unrecognised_labels."
    ),
    "imagenet": (
        "predictions = a JSON object {image: class index} (top-1 only) or {image: [class indices, best "
        "first]} with at least 5 distinct classes for every image; annotations = a JSON object {file name: "
        "class index} or 'file_name class_index' lines (val.txt layout, 0-based indices in sorted-wnid order). "
        "Keys match on the file stem. Classes must lie in 0..num_classes-1 (--num-classes, default 1000); a "
        "repeated class in a ranking, or an image with fewer than 5 classes in a file of rankings, is an error "
        "naming the image. Prints accuracy (top-1), top5_accuracy (null for one class per image, or under 5 "
        "classes in all) and num_images."
    ),
    "coco_retrieval": (
        "predictions = a score matrix of every image x every caption of the split (higher = more similar): "
        ".npz with arrays scores [num_images, num_texts], image_ids, text_ids (no pickled objects), or .json "
        "{image_ids, text_ids, scores: one list per image}. Image ids are the Karpathy cocoid (COCO) / imgid "
        "(Flickr30K) integers or the image file names; text ids are the Karpathy sentid. Rows and columns "
        "may come in any order; every image and caption of the split must appear once, and every score must "
        "be finite. annotations = the Karpathy JSON (dataset_coco.json / dataset_flickr30k.json); --split "
        "picks the split (default test). Ties count against the correct item (a wrong candidate with an equal "
        "score ranks first), so the result does not depend on row or column order. Prints tr_r1, tr_r5, "
        "tr_r10, ir_r1, ir_r5, ir_r10 (percent), average_score (their mean), num_images, num_texts, split. "
        "The zero-shot retrieval units are meant to read the same files."
    ),
    "flickr30k_retrieval": "as coco_retrieval, with dataset_flickr30k.json and imgid image ids.",
    "ade20k": (
        "predictions = a zip file or folder of <image stem>.png label maps with the challenge ids 1..150 "
        "(0 = other, not scored); annotations = the annotations/<split> folder of the ADEChallengeData2016 "
        "layout. Prints mIoU, aAcc, mAcc (percent, from one dataset-level confusion matrix) and num_images."
    ),
    "coco_detection": (
        "predictions = the official COCO result file, a JSON list of {image_id, category_id, bbox [x, y, w, "
        "h], score} with segmentation (compressed RLE, counts as a string) for masks; annotations = "
        "instances_val2017.json. Scored only by pycocotools COCOeval: prints bbox_AP, bbox_AP50, bbox_AP75, "
        "bbox_APs/m/l, bbox_AR1/10/100, bbox_ARs/m/l, the same segm_* when every entry has a mask (percent), "
        "num_detections and the annotation counts."
    ),
}

# Options that only some tasks read: option name -> tasks.
TASK_OPTIONS = {
    "questions": ("vqav2",),
    "vqa_eval_revision": ("vqav2",),
    "num_classes": ("imagenet",),
    "split": ("coco_retrieval", "flickr30k_retrieval"),
}
