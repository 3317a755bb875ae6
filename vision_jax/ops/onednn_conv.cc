// oneDNN's convolutions as XLA:CPU custom calls: forward, input gradient, weight gradient.
//
// oneDNN's direct (brgemm) kernels, the library PyTorch's CPU convolutions call, are faster
// than XLA:CPU's own (Eigen) convolution (bench/README.md). Layouts are the model's own: activations
// NHWC, weights HWIO, float32. Weights are reordered to oneDNN's blocked layout per call
// (and the weight gradient back to HWIO); primitives are built once per geometry.
//
// Built on first use by vision_jax/ops/onednn.py (g++, headers from jaxlib and from the
// onednn-devel wheel); every entry point is an XLA FFI handler.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

namespace {

enum Kind { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

// One convolution's geometry: NHWC input (n, h, w, c), HWIO kernel (kh, kw, c, o), NHWC
// output (n, ho, wo, o), strides and (low, high) paddings.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr;
  memory::desc src() const { return {{n, c, h, w}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc dst() const { return {{n, o, ho, wo}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc hwio() const { return {{o, c, kh, kw}, memory::data_type::f32, Tag::hwio}; }
  memory::desc any_weights() const {
    return {{o, c, kh, kw}, memory::data_type::f32, Tag::any};
  }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_lo() const { return {pt, pl}; }
  memory::dims pad_hi() const { return {pb, pr}; }
  Key key(Kind kind) const {
    return std::make_tuple(static_cast<int>(kind), n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb,
                           pl, pr);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A convolution primitive and the reorder between HWIO and the layout it wants. Their
// scratch memory is passed in per call: oneDNN's own (library-managed) scratchpad is shared
// between threads, and XLA runs one device's program per thread (wrong results, measured).
struct Plan {
  dnnl::primitive conv;
  memory::desc scratch;
  memory::desc weights;  // The primitive's weight (or weight-gradient) layout.
  bool reorder = false;  // Whether that differs from HWIO.
  dnnl::reorder to_or_from_hwio;
  memory::desc reorder_scratch;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.src(), g.any_weights(), g.dst(), g.strides(), g.pad_lo(), g.pad_hi(),
      UserScratchpad());
}

std::unique_ptr<Plan> MakePlan(const Geometry& g, Kind kind) {
  auto plan = std::make_unique<Plan>();
  auto forward = ForwardDesc(g);
  if (kind == kForward) {
    plan->conv = dnnl::convolution_forward(forward);
    plan->weights = forward.weights_desc();
    plan->scratch = forward.scratchpad_desc();
  } else if (kind == kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        g.strides(), g.pad_lo(), g.pad_hi(), forward, UserScratchpad());
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights = pd.weights_desc();
    plan->scratch = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        g.strides(), g.pad_lo(), g.pad_hi(), forward, UserScratchpad());
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights = pd.diff_weights_desc();
    plan->scratch = pd.scratchpad_desc();
  }
  plan->reorder = plan->weights != g.hwio();
  if (plan->reorder) {
    const bool back = kind == kWeightGrad;
    dnnl::reorder::primitive_desc pd(Engine(), back ? plan->weights : g.hwio(), Engine(),
                                     back ? g.hwio() : plan->weights, UserScratchpad());
    plan->to_or_from_hwio = dnnl::reorder(pd);
    plan->reorder_scratch = pd.scratchpad_desc();
  }
  return plan;
}

// Building a primitive generates code (milliseconds); each geometry is built once.
const Plan& GetPlan(const Geometry& g, Kind kind) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.key(kind)];
  if (!plan) plan = MakePlan(g, kind);
  return *plan;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
}

memory Wrap(const memory::desc& desc, const void* data) {
  return memory(desc, Engine(), const_cast<void*>(data));
}

// Memory for one call's temporaries (reordered weights, scratchpads), per thread and reused
// by the next call: a fresh allocation per call would page-fault megabytes every step.
enum Slot { kWeights = 0, kScratch = 1, kReorderScratch = 2, kSlots = 3 };

memory Temporary(const memory::desc& desc, Slot slot) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[kSlots];
  Buffer& buffer = buffers[slot];
  const size_t size = desc.get_size();
  if (size > buffer.size) {
    std::free(buffer.data);
    buffer.size = (size + 4095) / 4096 * 4096;
    buffer.data = std::aligned_alloc(64, buffer.size);
    if (buffer.data == nullptr) {
      buffer.size = 0;
      throw dnnl::error(dnnl_out_of_memory, "no memory for a oneDNN temporary");
    }
  }
  return memory(desc, Engine(), buffer.data);
}

// Runs `kind` with `args` (weights passed separately, in HWIO at `hwio`).
ffi::Error Run(const Geometry& g, Kind kind, std::unordered_map<int, memory> args,
               void* hwio) {
  try {
    const Plan& plan = GetPlan(g, kind);
    dnnl::stream stream(Engine());
    memory user = Wrap(g.hwio(), hwio);
    memory weights = plan.reorder ? Temporary(plan.weights, kWeights) : user;
    const int weights_arg = kind == kWeightGrad ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
    auto reorder = [&](memory& from, memory& to) {
      plan.to_or_from_hwio.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                            {DNNL_ARG_SCRATCHPAD,
                                             Temporary(plan.reorder_scratch,
                                                       kReorderScratch)}});
    };
    if (plan.reorder && kind != kWeightGrad) reorder(user, weights);
    args[weights_arg] = weights;
    args[DNNL_ARG_SCRATCHPAD] = Temporary(plan.scratch, kScratch);
    plan.conv.execute(stream, args);
    if (plan.reorder && kind == kWeightGrad) reorder(weights, user);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb,
                            pl, pr);
  return Run(g, kForward,
             {{DNNL_ARG_SRC, Wrap(g.src(), x.typed_data())},
              {DNNL_ARG_DST, Wrap(g.dst(), y->typed_data())}},
             w.typed_data());
}

ffi::Error InputGrad(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                     int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt,
                            pb, pl, pr);
  return Run(g, kInputGrad,
             {{DNNL_ARG_DIFF_DST, Wrap(g.dst(), dy.typed_data())},
              {DNNL_ARG_DIFF_SRC, Wrap(g.src(), dx->typed_data())}},
             w.typed_data());
}

ffi::Error WeightGrad(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt,
                            pb, pl, pr);
  return Run(g, kWeightGrad,
             {{DNNL_ARG_SRC, Wrap(g.src(), x.typed_data())},
              {DNNL_ARG_DIFF_DST, Wrap(g.dst(), dy.typed_data())}},
             dw->typed_data());
}

}  // namespace

#define VJ_CONV_BINDING(...)                                                          \
  ffi::Ffi::Bind()                                                                    \
      .Arg<F32>()                                                                     \
      .Arg<F32>()                                                                     \
      .Ret<F32>()                                                                     \
      .Attr<int64_t>("sh")                                                            \
      .Attr<int64_t>("sw")                                                            \
      .Attr<int64_t>("pt")                                                            \
      .Attr<int64_t>("pb")                                                            \
      .Attr<int64_t>("pl")                                                            \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(VjConvForward, Forward, VJ_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VjConvInputGrad, InputGrad, VJ_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(VjConvWeightGrad, WeightGrad, VJ_CONV_BINDING());
