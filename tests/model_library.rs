//! The model library written in the language (`src/models/*.ngx`):
//! parameter counts against torchvision's, structural validity, and
//! torchvision's `state_dict` names.

use nngeo::check::CheckOptions;
use nngeo::plan::{ModelSpec, Op};

/// The specs of the models a source declares, by name.
fn models(src: &str) -> Vec<(String, ModelSpec)> {
    let opts = CheckOptions {
        default_budget: 16 << 30,
        ..CheckOptions::default()
    };
    let plan = nngeo::compile_source(src, &opts)
        .unwrap_or_else(|d| panic!("{}", nngeo::diag::render("model.ngx", src, &d)));
    plan.steps
        .into_iter()
        .filter_map(|s| match s.op {
            Op::Model { name, spec } => Some((name, spec)),
            _ => None,
        })
        .collect()
}

fn model(call: &str) -> ModelSpec {
    let src = format!("experiment m {{ seed = 0 }}\nmodel net = {call}\n");
    models(&src).remove(0).1
}

#[test]
fn parameter_counts_match_torchvision() {
    for (call, params) in [
        ("resnet18()", 11_689_512),
        ("resnet34()", 21_797_672),
        ("vgg(depth = 11)", 132_863_336),
        ("vgg(depth = 11, bn = true)", 132_868_840),
        ("vgg(depth = 16)", 138_357_544),
        ("vgg(depth = 19)", 143_667_240),
        // Zagoruyko & Komodakis' WRN-28-10 on CIFAR-10.
        ("wide_resnet(depth = 28, width = 10)", 36_479_194),
        ("lenet5()", 61_706),
        // 784-1000-500-250-30-250-500-1000-784.
        ("autoencoder()", 2_837_314),
        ("mobilenet_v2()", 3_504_872),
        ("mobilenet_v2(classes = 10)", 2_236_682),
    ] {
        let spec = model(call);
        assert_eq!(spec.params, params, "{call}");
        spec.validate().unwrap_or_else(|e| panic!("{call}: {e}"));
    }
}

#[test]
fn every_library_model_checks_and_validates_at_its_defaults() {
    let lib = nngeo::check::library_models();
    let names: Vec<&str> = lib.iter().map(|m| m.name.as_str()).collect();
    for want in [
        "resnet18",
        "resnet34",
        "vgg",
        "wide_resnet",
        "lenet5",
        "autoencoder",
        "mobilenet_v2",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for m in &lib {
        let spec = model(&format!("{}()", m.name));
        spec.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert!(!m.doc.is_empty(), "{} has no doc comment", m.name);
    }
}

#[test]
fn cifar_variants_and_options() {
    let r = model("resnet18(classes = 10, stem = cifar, input = [3, 32, 32])");
    assert_eq!(r.output, vec![10]);
    assert_eq!(r.layers[0].name, "conv1");
    assert!(r.layer("maxpool").is_none());
    let v = model("vgg(depth = 16, head = cifar, classes = 10, input = [3, 32, 32])");
    assert_eq!(v.layers.last().unwrap().name, "classifier");
    // kuangliu/pytorch-cifar's VGG16 (with batch norm) has 14,728,266:
    // without its 8,448 batch-norm parameters, 14,719,818.
    assert_eq!(v.params, 14_728_266 - 8_448);
    for call in [
        "wide_resnet(depth = 16, width = 4)",
        "lenet5(input = [3, 32, 32], act = tanh)",
        "autoencoder(input = 64, hidden = [32, 16, 8], code = 4, act = sigmoid)",
        "resnet34(classes = 100, stem = cifar, input = [3, 32, 32])",
    ] {
        model(call)
            .validate()
            .unwrap_or_else(|e| panic!("{call}: {e}"));
    }
}

/// torchvision's `resnet18().state_dict().keys()`, in order (abridged to
/// the first block, a downsampling block and the head).
#[test]
fn resnet18_state_dict_names_are_torchvision_s() {
    let keys: Vec<String> = model("resnet18()")
        .state_tensors()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys.len(), 122);
    let expect_prefix = [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
    ];
    assert_eq!(&keys[..8], &expect_prefix);
    let i = keys
        .iter()
        .position(|k| k == "layer2.0.downsample.0.weight")
        .unwrap();
    assert_eq!(keys[i - 1], "layer2.0.bn2.num_batches_tracked");
    assert_eq!(keys[i + 1], "layer2.0.downsample.1.weight");
    assert_eq!(&keys[120..], &["fc.weight", "fc.bias"]);
}

/// torchvision's `mobilenet_v2().state_dict()`: 314 tensors, in order
/// (abridged): the stem, the first inverted residual (no expansion), the
/// second (expansion, depthwise, projection) and the head. A torchvision
/// model with random weights and batch-norm statistics, saved as
/// safetensors and loaded with `weights = ...`, gave the same float64
/// cross-entropy on 8 CIFAR-size images (2.3250002866736366 against
/// PyTorch's 2.325000286673636).
#[test]
fn mobilenet_v2_state_dict_names_are_torchvision_s() {
    let tensors = model("mobilenet_v2(classes = 10, input = [3, 32, 32])").state_tensors();
    assert_eq!(tensors.len(), 314);
    let shape = |key: &str| {
        tensors
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, s, _)| s.clone())
            .unwrap_or_else(|| panic!("no {key}"))
    };
    let keys: Vec<&str> = tensors.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        &keys[..8],
        &[
            "features.0.0.weight",
            "features.0.1.weight",
            "features.0.1.bias",
            "features.0.1.running_mean",
            "features.0.1.running_var",
            "features.0.1.num_batches_tracked",
            "features.1.conv.0.0.weight",
            "features.1.conv.0.1.weight",
        ]
    );
    assert_eq!(&keys[312..], &["classifier.1.weight", "classifier.1.bias"]);
    for (key, want) in [
        ("features.0.0.weight", vec![32, 3, 3, 3]),
        // Depthwise: one input channel per group.
        ("features.1.conv.0.0.weight", vec![32, 1, 3, 3]),
        ("features.1.conv.1.weight", vec![16, 32, 1, 1]),
        ("features.2.conv.0.0.weight", vec![96, 16, 1, 1]),
        ("features.2.conv.1.0.weight", vec![96, 1, 3, 3]),
        ("features.2.conv.2.weight", vec![24, 96, 1, 1]),
        ("features.2.conv.3.running_var", vec![24]),
        ("features.17.conv.2.weight", vec![320, 960, 1, 1]),
        ("features.18.0.weight", vec![1280, 320, 1, 1]),
        ("classifier.1.weight", vec![10, 1280]),
    ] {
        assert_eq!(shape(key), want, "{key}");
    }
}

#[test]
fn vgg_names_skip_absent_batch_norms() {
    let plain: Vec<String> = model("vgg(depth = 11)")
        .param_layers()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(&plain[..3], &["features.0", "features.3", "features.6"]);
    assert_eq!(
        &plain[plain.len() - 3..],
        &["classifier.0", "classifier.3", "classifier.6"]
    );
    let bn: Vec<String> = model("vgg(depth = 11, bn = true)")
        .param_layers()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(
        &bn[..4],
        &["features.0", "features.1", "features.4", "features.5"]
    );
}

/// A value `def` of the file gives a layer's size outside blocks too (it
/// worked only inside them), and a non-integer result is refused there.
#[test]
fn value_defs_size_layers_at_the_top_level() {
    let src = "experiment m { seed = 0 }\ndef f(n) = n * 2\n\
               model net = sequential(conv2d(1, f(2), kernel = 1), flatten, linear(256, 10), input = [1, 8, 8])\n";
    let (_, spec) = models(src).remove(0);
    assert_eq!(spec.layers[0].output, vec![4, 8, 8]);
    let bad = "experiment m { seed = 0 }\ndef g(n) = n / 3\n\
               model net = sequential(conv2d(1, g(2), kernel = 1), flatten, linear(64, 10), input = [1, 8, 8])\n";
    let d = nngeo::compile_source(bad, &CheckOptions::default()).unwrap_err();
    let text = nngeo::diag::render("m.ngx", bad, &d);
    assert!(text.contains("expected an integer"), "{text}");
}

/// PyTorch's other activations, pooling options and norms without affine
/// parameters, written in a top-level `sequential(...)`: the layers they
/// make, their shapes, and a `state_dict` without the absent scales and
/// shifts (a BatchNorm keeps its running statistics).
#[test]
fn activations_pooling_options_and_plain_norms() {
    use nngeo::plan::Layer;
    let spec = model(
        "sequential(conv2d(1, 4, kernel = 2), batchnorm2d(4, affine = false), \
         leaky_relu(slope = 0.2), maxpool2d(kernel = 2, stride = 2, ceil_mode = true), \
         instancenorm2d(4), elu(alpha = 0.5), \
         avgpool2d(kernel = 3, stride = 2, padding = 1, count_include_pad = false), \
         groupnorm(2, 4, affine = false), silu, flatten, layernorm([16], affine = false), \
         linear(16, 3), input = [1, 8, 8], init = pytorch(seed = 0))",
    );
    let kinds: Vec<(&str, Vec<usize>, u64)> = spec
        .layers
        .iter()
        .map(|l| (l.layer.type_name(), l.output.clone(), l.params))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Conv2d", vec![4, 7, 7], 20),
            ("BatchNorm2d", vec![4, 7, 7], 0),
            ("LeakyReLU", vec![4, 7, 7], 0),
            // Ceil mode: 4×4 where floor mode gives 3×3.
            ("MaxPool2d", vec![4, 4, 4], 0),
            ("GroupNorm", vec![4, 4, 4], 0),
            ("ELU", vec![4, 4, 4], 0),
            ("AvgPool2d", vec![4, 2, 2], 0),
            ("GroupNorm", vec![4, 2, 2], 0),
            ("SiLU", vec![4, 2, 2], 0),
            ("Flatten", vec![16], 0),
            ("LayerNorm", vec![16], 0),
            ("Linear", vec![3], 51),
        ]
    );
    assert_eq!(spec.layers[2].layer, Layer::LeakyRelu { slope: 0.2 });
    assert_eq!(spec.layers[5].layer, Layer::Elu { alpha: 0.5 });
    assert!(matches!(
        spec.layers[4].layer,
        Layer::GroupNorm {
            groups: 4,
            channels: 4,
            affine: false,
            ..
        }
    ));
    let keys: Vec<String> = spec.state_tensors().into_iter().map(|t| t.0).collect();
    assert_eq!(
        keys,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.11.weight",
            "layers.11.bias",
            "layers.1.running_mean",
            "layers.1.running_var",
            "layers.1.num_batches_tracked",
        ]
    );
    assert_eq!(spec.params, 71);
}
