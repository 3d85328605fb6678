"""toolchain.keras_source: detecting, describing and exporting Keras models and SavedModels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.text_samples import TextSample
from toolchain.errors import UserInputError
from toolchain.keras_source import (
    KerasInfo,
    default_shape,
    describe,
    is_keras_source,
    keras_kind,
    predict,
    to_saved_model,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_model(text_sample: TextSample):
    import keras

    return keras.saving.load_model(text_sample.model, compile=False)


@pytest.fixture(scope="module")
def val_x(text_sample: TextSample) -> np.ndarray:
    with np.load(text_sample.val) as val:
        return val["x"][:48]


@pytest.fixture(scope="module")
def dynamic_saved_model(keras_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The classifier as a SavedModel with a dynamic batch: serving_default takes (None, 32)."""
    dest = tmp_path_factory.mktemp("dynamic") / "saved_model"
    keras_model.export(str(dest), format="tf_saved_model", verbose=False)
    return dest


@pytest.fixture(scope="module")
def exported(text_sample: TextSample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_saved_model(text_sample.model, [1, 32], tmp_path_factory.mktemp("exported") / "sm")


@pytest.fixture(scope="module")
def exported_from_saved_model(dynamic_saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_saved_model(dynamic_saved_model, [1, 32], tmp_path_factory.mktemp("restatic") / "sm")


def _tf():
    from edgebase.deps import import_tensorflow

    return import_tensorflow()


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------


def test_detection(text_sample: TextSample, tmp_path: Path):
    assert keras_kind(text_sample.model) == "keras" and is_keras_source(text_sample.model)
    assert keras_kind(text_sample.saved_model) == "saved_model" and is_keras_source(text_sample.saved_model)
    pbtxt = tmp_path / "pbtxt"
    pbtxt.mkdir()
    (pbtxt / "saved_model.pbtxt").write_text("")
    assert keras_kind(pbtxt) == "saved_model"

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    not_keras = tmp_path / "other.keras"  # a zip, but not a Keras archive
    with zipfile.ZipFile(not_keras, "w") as zf:
        zf.writestr("data.pkl", b"")
    renamed = tmp_path / "model.zip"  # a Keras archive without the .keras suffix
    renamed.write_bytes(text_sample.model.read_bytes())
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip at all")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(text_sample.model.read_bytes()[:5000])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    unzipped = tmp_path / "unzipped"  # a .keras archive unpacked (Keras can read it; edgectl does not)
    with zipfile.ZipFile(text_sample.model) as zf:
        zf.extractall(unzipped)
    for path in (
        onnx,
        not_keras,
        renamed,
        garbage,
        truncated,
        empty_dir,
        unzipped,
        text_sample.val,
        tmp_path / "nope",
    ):
        assert not is_keras_source(path), path
        assert keras_kind(path) is None


# ---------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------


def test_describe_keras(text_sample: TextSample):
    info = describe(text_sample.model)
    assert info == KerasInfo(
        kind="keras",
        input_name="token_ids",
        input_shape=[None, 32],
        input_dtype="int32",
        output_names=["output_0"],
        output_shapes=[[None, 3]],
    )
    assert default_shape(info) == [1, 32]


def test_describe_saved_models(text_sample: TextSample, dynamic_saved_model: Path):
    static = describe(text_sample.saved_model)  # make_text_classifier exports [1, 32]
    assert static == KerasInfo("saved_model", "token_ids", [1, 32], "int32", ["output_0"], [[1, 3]])
    dynamic = describe(dynamic_saved_model)
    assert dynamic.input_shape == [None, 32] and dynamic.input_dtype == "int32"
    assert dynamic.input_name == "token_ids" and dynamic.output_shapes == [[None, 3]]
    assert default_shape(static) == default_shape(dynamic) == [1, 32]


def test_default_shape():
    info = KerasInfo("keras", "x", [None, None, 3], "float32", ["output_0"], [[None, 2]])
    assert default_shape(info) is None
    assert default_shape(KerasInfo("keras", "x", [None, 8, 8, 3], "float32", [], [])) == [1, 8, 8, 3]
    assert default_shape(KerasInfo("keras", "x", [4, 8], "float32", [], [])) == [4, 8]


# ---------------------------------------------------------------------------
# to_saved_model and predict
# ---------------------------------------------------------------------------


def test_to_saved_model_from_keras(exported: Path, keras_model, val_x: np.ndarray):
    info = describe(exported)
    assert info.kind == "saved_model" and info.input_shape == [1, 32] and info.input_dtype == "int32"
    assert info.input_name == "token_ids" and info.output_shapes == [[1, 3]]
    outputs = predict(exported, val_x)
    assert len(outputs) == 1 and outputs[0].shape == (len(val_x), 3)
    np.testing.assert_allclose(outputs[0], keras_model.predict(val_x, verbose=0), atol=1e-5)
    # int64 ids (as np.load of user data often gives) are cast to the signature's int32
    np.testing.assert_allclose(predict(exported, val_x.astype(np.int64))[0], outputs[0], atol=0)
    with pytest.raises(TypeError):
        predict(exported, val_x.astype(np.float32))


def test_to_saved_model_from_saved_model(
    exported_from_saved_model: Path, dynamic_saved_model: Path, keras_model, val_x: np.ndarray
):
    info = describe(exported_from_saved_model)
    assert info.input_shape == [1, 32] and info.input_name == "token_ids" and info.input_dtype == "int32"
    assert info.output_names == ["output_0"] and info.output_shapes == [[1, 3]]
    expected = keras_model.predict(val_x, verbose=0)
    np.testing.assert_allclose(predict(exported_from_saved_model, val_x)[0], expected, atol=1e-5)
    np.testing.assert_allclose(predict(dynamic_saved_model, val_x)[0], expected, atol=1e-5)


def test_outputs_are_named_as_the_signature_names_them(tmp_path: Path):
    import keras

    inputs = keras.Input(shape=(6,), name="features")
    heads = [keras.layers.Dense(n, name=f"head{n}")(inputs) for n in (2, 3, 4)]
    listed = tmp_path / "listed.keras"
    keras.Model(inputs, heads).save(listed)
    info = describe(listed)
    assert info.input_dtype == "float32" and info.input_shape == [None, 6]
    assert info.output_names == ["output_0", "output_1", "output_2"]
    assert info.output_shapes == [[None, 2], [None, 3], [None, 4]]
    exported = describe(to_saved_model(listed, [1, 6], tmp_path / "listed"))
    assert exported.output_names == info.output_names
    assert exported.output_shapes == [[1, 2], [1, 3], [1, 4]]

    keyed = tmp_path / "keyed.keras"
    keras.Model(inputs, {"zeta": heads[0], "alpha": heads[2]}).save(keyed)
    info = describe(keyed)
    assert info.output_names == ["alpha", "zeta"] and info.output_shapes == [[None, 4], [None, 2]]
    dest = to_saved_model(keyed, [1, 6], tmp_path / "keyed")
    assert describe(dest).output_names == ["alpha", "zeta"]
    x = np.arange(12, dtype=np.float64).reshape(2, 6)  # float64 is cast to the signature's float32
    alpha, zeta = predict(dest, x)
    assert alpha.shape == (2, 4) and zeta.shape == (2, 2) and alpha.dtype == np.float32


def test_to_saved_model_is_repeatable(
    text_sample: TextSample, exported: Path, val_x: np.ndarray, tmp_path: Path
):
    (tmp_path / "empty").mkdir()  # an empty directory is as good as none
    again = to_saved_model(text_sample.model, [1, 32], tmp_path / "empty")
    assert describe(again) == describe(exported)
    np.testing.assert_array_equal(predict(again, val_x)[0], predict(exported, val_x)[0])


def test_to_saved_model_refuses_a_used_destination(text_sample: TextSample, tmp_path: Path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("keep me")
    with pytest.raises(FileExistsError):
        to_saved_model(text_sample.model, [1, 32], tmp_path / "used")
    assert (tmp_path / "used" / "file").read_text() == "keep me"


@pytest.mark.parametrize("shape", [[1, 64], [32], [1, 32, 1], [0, 32], [1, -1]])
def test_to_saved_model_refuses_a_shape_that_contradicts_the_model(
    text_sample: TextSample, tmp_path: Path, shape: list[int]
):
    with pytest.raises(UserInputError) as err:
        to_saved_model(text_sample.model, shape, tmp_path / "out")
    assert err.value.hint and "(None, 32)" in err.value.message + err.value.hint
    assert not (tmp_path / "out").exists()


def test_static_saved_model_refuses_another_batch(text_sample: TextSample, tmp_path: Path):
    with pytest.raises(UserInputError, match=r"\(1, 32\)"):
        to_saved_model(text_sample.saved_model, [2, 32], tmp_path / "out")


# ---------------------------------------------------------------------------
# models edgectl refuses
# ---------------------------------------------------------------------------


def _assert_refused(path: Path, *needles: str) -> UserInputError:
    with pytest.raises(UserInputError) as err:
        describe(path)
    error = err.value
    assert "\n" not in error.message and error.hint, (error.message, error.hint)
    text = f"{error.message} {error.hint}"
    for needle in needles:
        assert needle in text, text
    return error


def test_corrupt_keras_files(text_sample: TextSample, tmp_path: Path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"\x00" * 100)
    _assert_refused(garbage, "garbage.keras", "not a valid .keras file")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(text_sample.model.read_bytes()[:5000])
    _assert_refused(truncated, "truncated.keras")
    bad_config = tmp_path / "bad_config.keras"  # detected by its names, but nothing in it loads
    with zipfile.ZipFile(bad_config, "w") as zf:
        zf.writestr("config.json", "{not json")
        zf.writestr("metadata.json", "{}")
    assert is_keras_source(bad_config)
    _assert_refused(bad_config, "cannot load Keras model bad_config.keras")
    no_weights = tmp_path / "no_weights.keras"
    with zipfile.ZipFile(text_sample.model) as src, zipfile.ZipFile(no_weights, "w") as dst:
        for name in ("config.json", "metadata.json"):
            dst.writestr(name, src.read(name))
    _assert_refused(no_weights, "cannot load Keras model no_weights.keras")
    _assert_refused(tmp_path / "missing.keras", "does not exist")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07")
    _assert_refused(other, "neither a .keras model nor a SavedModel")


def test_lambda_layer_is_refused_not_run(tmp_path: Path):
    import keras

    marker = tmp_path / "ran"
    # the lambda leaves a mark whenever it runs: on the symbolic input while the model is built, and
    # again if loading rebuilt the model from it
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")
    inputs = keras.Input(shape=(4,), name="x")
    outputs = keras.layers.Lambda(touch)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    assert marker.exists()
    marker.unlink()
    assert is_keras_source(path)
    error = _assert_refused(path, "lambda.keras", "Lambda")
    assert "SavedModel" in error.hint and "model.export" in error.hint
    with pytest.raises(UserInputError, match="Lambda"):
        to_saved_model(path, [1, 4], tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_custom_layer_is_refused(tmp_path: Path):
    import keras

    @keras.saving.register_keras_serializable(package="edgectl_test")
    class Double(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input(shape=(4,), name="x")
    path = tmp_path / "custom.keras"
    keras.Model(inputs, Double()(inputs)).save(path)
    keras.saving.get_custom_objects().pop("edgectl_test>Double")
    error = _assert_refused(path, "custom.keras", "custom layer")
    assert "model.export" in error.hint


def test_two_input_model_is_refused(tmp_path: Path):
    import keras

    a, b = keras.Input(shape=(4,), name="a"), keras.Input(shape=(4,), name="b")
    path = tmp_path / "two.keras"
    keras.Model([a, b], keras.layers.Add()([a, b])).save(path)
    _assert_refused(path, "2 inputs", "exactly one input")


def test_saved_model_without_serving_default_is_refused(tmp_path: Path):
    tf = _tf()
    module = tf.Module()
    module.double = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    path = tmp_path / "no_signature"
    tf.saved_model.save(module, str(path), signatures={})
    assert is_keras_source(path)
    _assert_refused(path, "no serving_default signature", "signatures: none")
    renamed = tmp_path / "renamed"
    tf.saved_model.save(module, str(renamed), signatures={"predict": module.double.get_concrete_function()})
    _assert_refused(renamed, "signatures: predict")


def test_two_input_saved_model_is_refused(tmp_path: Path):
    tf = _tf()
    module = tf.Module()
    module.add = tf.function(
        lambda a, b: {"sum": a + b},
        input_signature=[tf.TensorSpec([1, 4], tf.float32, "a"), tf.TensorSpec([1, 4], tf.float32, "b")],
    )
    path = tmp_path / "two_inputs"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.add.get_concrete_function()})
    _assert_refused(path, "2 inputs")


# ---------------------------------------------------------------------------
# the export is what TFLite needs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["exported", "exported_from_saved_model"])
def test_exported_saved_model_converts_to_tflite(
    fixture: str, request: pytest.FixtureRequest, val_x: np.ndarray
):
    tf = _tf()
    from ai_edge_litert.interpreter import Interpreter

    dest = request.getfixturevalue(fixture)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(dest)).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["shape"].tolist() == [1, 32] and inp["dtype"] == np.int32
    assert out["shape"].tolist() == [1, 3] and out["dtype"] == np.float32
    signature = interpreter.get_signature_list()["serving_default"]
    assert signature == {"inputs": ["token_ids"], "outputs": ["output_0"]}
    got = []
    for row in val_x[:16]:
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.stack(got), predict(dest, val_x[:16])[0], atol=1e-4)
