"""Fixtures laid out exactly like the originals: CUB-200-2011 + Reed's cvpr2016_cub captions,
Oxford-102 + Reed's cvpr2016_flowers captions, and the peer GAN-CLS birds.hdf5 layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from tiers import needs

# Scene rendering and the caption vocabulary are pure (the robot install runs them too).
pytest_pycollect_makemodule = needs(
    __file__,
    "torch",
    "h5py",
    except_files={"test_scenes.py", "test_vocabulary.py", "test_phrasing.py"},
)

CUB_CLASSES = (
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
)
CUB_IMAGES_PER_CLASS = 3
# Bounding box (x, y, w, h) of the red "bird" drawn on every blue CUB fixture image.
CUB_BOX = (70.0, 30.0, 40.0, 30.0)


def jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes of a uint8 RGB image."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return data.tobytes()


def bird_image(width: int = 160, height: int = 100, shade: int = 0) -> np.ndarray:
    """Blue background with a red box at CUB_BOX: uint8 (height, width, 3) RGB."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (20, 40, 200 - shade)
    x, y, w, h = (int(v) for v in CUB_BOX)
    image[y : y + h, x : x + w] = (220, 20, 20)
    return image


def captions_text(label: str, count: int = 10) -> str:
    """Reed's text_c10 file body: one caption per line, trailing newline."""
    return "".join(f"this bird {label} has feature number {k}\n" for k in range(count))


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """tmp/CUB_200_2011 and tmp/cvpr2016_cub, 4 classes × 3 images; classes 1-3 train+val,
    class 4 test (Reed's class split)."""
    cub = tmp_path / "CUB_200_2011"
    reed = tmp_path / "cvpr2016_cub"
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for class_id, cls in enumerate(CUB_CLASSES, 1):
        (cub / "images" / cls).mkdir(parents=True)
        (reed / "text_c10" / cls).mkdir(parents=True)
        for k in range(CUB_IMAGES_PER_CLASS):
            image_id += 1
            stem = f"{cls.split('.')[1]}_{k + 1:04d}_{790000 + image_id}"
            (cub / "images" / cls / f"{stem}.jpg").write_bytes(jpeg(bird_image(shade=image_id)))
            (reed / "text_c10" / cls / f"{stem}.txt").write_text(captions_text(stem))
            images.append(f"{image_id} {cls}/{stem}.jpg")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(k < 2)}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in CUB_BOX))
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (cub / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    (reed / "trainvalclasses.txt").write_text("\n".join(CUB_CLASSES[:3]) + "\n")
    (reed / "trainclasses.txt").write_text("\n".join(CUB_CLASSES[:2]) + "\n")
    (reed / "valclasses.txt").write_text(CUB_CLASSES[2] + "\n")
    (reed / "testclasses.txt").write_text(CUB_CLASSES[3] + "\n")
    return tmp_path


@pytest.fixture
def oxford_root(tmp_path: Path) -> Path:
    """tmp/102flowers/jpg and tmp/cvpr2016_flowers: classes 1-2 train+val, class 3 test."""
    jpg = tmp_path / "102flowers" / "jpg"
    jpg.mkdir(parents=True)
    reed = tmp_path / "cvpr2016_flowers"
    number = 0
    for class_number in (1, 2, 3):
        folder = reed / "text_c10" / f"class_{class_number:05d}"
        folder.mkdir(parents=True)
        for _ in range(2):
            number += 1
            stem = f"image_{number:05d}"
            (jpg / f"{stem}.jpg").write_bytes(jpeg(bird_image(120, 90, shade=number)))
            (folder / f"{stem}.txt").write_text(captions_text(f"flower {stem}"))
    (reed / "trainvalclasses.txt").write_text("class_00001\nclass_00002\n")
    (reed / "testclasses.txt").write_text("class_00003\n")
    return tmp_path


# Caption draws per image, as the peer script's np.random.choice(range(10), 5) (with
# replacement) might make them: image 0 repeats caption 3, image 2 has only two distinct.
PEER_DRAWS = ((3, 1, 3, 7, 0), (0, 1, 2, 3, 4), (5, 5, 9, 5, 9), (2, 8, 6, 4, 1))
PEER_CLASSES = ("001.Black_footed_Albatross", "001.Black_footed_Albatross",
                "002.Laysan_Albatross", "003.Sooty_Albatross")  # fmt: skip


def write_peer_file(
    path: Path,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    mutate: Callable[[object, str, int, int], None] | None = None,
) -> Path:
    """A birds.hdf5 in the peer layout, written the way its convert_cub_to_hd5_script does.

    Each split holds the images of PEER_DRAWS (names prefixed with the split); `mutate(group,
    split, image, entry)` may damage an entry after it is written.
    """
    h5py = pytest.importorskip("h5py")
    dt = h5py.special_dtype(vlen=str)
    with h5py.File(path, "w") as f:
        for split in splits:
            group = f.create_group(split)
            for i, draws in enumerate(PEER_DRAWS):
                name = f"{split}_Bird_{i:04d}_{100 + i}"
                img = jpeg(bird_image(150 + 10 * i, 110, shade=i * 9))
                txt = np.array([f"{name} caption {k}\n" for k in range(10)])[list(draws)]
                embeddings = np.random.default_rng(i).standard_normal((5, 1024)).astype("f4")
                for c, e in enumerate(embeddings):
                    ex = group.create_group(f"{name}_{c}")
                    ex.create_dataset("name", data=name)
                    ex.create_dataset("img", data=np.void(img))
                    ex.create_dataset("embeddings", data=e)
                    ex.create_dataset("class", data=PEER_CLASSES[i])
                    ex.create_dataset("txt", data=txt[c].astype(object), dtype=dt)
                    if mutate is not None:
                        mutate(ex, split, i, c)
    return path


def assert_no_output(out: Path) -> None:
    """Neither the output nor any temp file of it exists."""
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


@pytest.fixture
def fx() -> SimpleNamespace:
    """This module's helpers and constants (test modules cannot import conftest under
    --import-mode=importlib)."""
    return SimpleNamespace(
        CUB_CLASSES=CUB_CLASSES,
        CUB_BOX=CUB_BOX,
        PEER_DRAWS=PEER_DRAWS,
        PEER_CLASSES=PEER_CLASSES,
        jpeg=jpeg,
        bird_image=bird_image,
        write_peer_file=write_peer_file,
        assert_no_output=assert_no_output,
    )
