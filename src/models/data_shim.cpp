// The classifier's data and checkpoint I/O over deltamoe::io.
#include "models/data_shim.h"

#include "deltamoe/io/idx.h"
#include "deltamoe/io/safetensors.h"

namespace deltamoe::models::detail {

namespace {
Split to_split(const io::ImageSplit& s) {
  Split out;
  out.images = s.images;
  const int32_t* l = s.labels.data<int32_t>();
  out.labels.assign(l, l + s.labels.numel());
  return out;
}
}  // namespace

Data load_data(const std::string& dir) {
  const io::FashionMnist fm = io::load_fashion_mnist(dir);
  Data d;
  d.train = to_split(fm.train);
  d.test = to_split(fm.test);
  return d;
}

void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, Tensor>>& tensors) {
  io::write_safetensors(path, tensors, {{"format", "deltamoe-moe-classifier-v1"}});
}

std::map<std::string, Tensor> load_tensors(const std::string& path) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  std::map<std::string, Tensor> out;
  for (const std::string& name : f.names()) {
    const Tensor t = f.get(name);
    DELTAMOE_CHECK(t.dtype() == DType::f32, "model", path, ": tensor '", name, "' is ",
                   dtype_name(t.dtype()), ", expected F32");
    out[name] = t.clone();
  }
  return out;
}

}  // namespace deltamoe::models::detail
