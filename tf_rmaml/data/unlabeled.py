"""Outside unlabeled images for the TRADES term: a user's .npz file or folder of images."""

import os

import numpy as np

from tf_rmaml.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load_pool(path, image_shape):
    """uint8 `[N, H, W, C]` images from `path`, fitted to `image_shape` (H, W, C).

    `path` is an .npz with an `images` array (uint8 `[N, H, W, C]` of exactly that shape), or
    a folder whose image files (png, jpg, bmp, gif; searched recursively) are decoded,
    resized and converted to C channels.
    """
    height, width, channels = image_shape
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise DataError(f"--unlabeled_source={path}: no such file.")
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise DataError(f"--unlabeled_source={path} has no 'images' array (keys: {', '.join(f.keys())}).")
            images = f["images"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != tuple(image_shape):
            raise DataError(
                f"--unlabeled_source={path}: 'images' must be uint8 [N, {height}, {width}, {channels}], "
                f"got {images.dtype} {images.shape}.")
        return images
    if not os.path.isdir(path):
        raise DataError(f"--unlabeled_source={path} is neither an .npz file nor a folder of images "
                        "(or use 'split' for images of the meta-training split, 'none' for no unlabeled data).")
    files = sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"--unlabeled_source={path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    import tensorflow as tf

    out = np.empty((len(files), height, width, channels), np.uint8)
    for i, name in enumerate(files):
        try:
            image = tf.io.decode_image(tf.io.read_file(name), channels=channels, expand_animations=False)
        except tf.errors.InvalidArgumentError as e:
            raise DataError(f"Cannot decode unlabeled image {name}: {e.message}") from None
        image = tf.image.resize(image, (height, width), antialias=True)
        out[i] = np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)
    return out
