// Closed-loop gRPC load generator for benchmarks/serve.py: keeps CONCURRENCY unary calls in
// flight (one completion-queue thread, no protobuf: the request is a pre-serialised file and
// responses are not parsed), so the client spends a few microseconds per call and the cores
// go to the server under test. With --concurrency 1 it measures sequential-call latency.
//
// Build:  g++ -O2 -std=c++17 grpc_load.cc -o grpc_load $(pkg-config --cflags --libs grpc++)
// Usage:  grpc_load --target HOST:PORT --method /pkg.Service/Method --payload FILE
//                   [--concurrency N] [--seconds S | --count N] [--channels K]
//                   [--warmup N] [--metadata KEY=VALUE]...
// Prints one JSON object: {"calls", "elapsed", "errors": {code: n}, "latencies": [seconds]}.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target, method, payload_file;
  int concurrency = 1, channels = 1, warmup = 20;
  double seconds = 0;
  long count = 0;
  std::vector<std::pair<std::string, std::string>> metadata;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "grpc_load: " << why << "\n"
            << "usage: grpc_load --target HOST:PORT --method /pkg.Service/Method --payload FILE "
               "[--concurrency N] [--seconds S | --count N] [--channels K] [--warmup N] "
               "[--metadata KEY=VALUE]...\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage("missing value after " + a);
    std::string v = argv[++i];
    if (a == "--target") o.target = v;
    else if (a == "--method") o.method = v;
    else if (a == "--payload") o.payload_file = v;
    else if (a == "--concurrency") o.concurrency = std::stoi(v);
    else if (a == "--channels") o.channels = std::stoi(v);
    else if (a == "--warmup") o.warmup = std::stoi(v);
    else if (a == "--seconds") o.seconds = std::stod(v);
    else if (a == "--count") o.count = std::stol(v);
    else if (a == "--metadata") {
      auto eq = v.find('=');
      if (eq == std::string::npos) usage("--metadata takes KEY=VALUE");
      o.metadata.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else usage("unknown option " + a);
  }
  if (o.target.empty() || o.method.empty() || o.payload_file.empty()) usage("--target, --method and --payload are required");
  if (o.concurrency < 1 || o.channels < 1) usage("--concurrency and --channels must be >= 1");
  if ((o.seconds > 0) == (o.count > 0)) usage("give exactly one of --seconds and --count");
  return o;
}

struct Call {
  grpc::ClientContext ctx;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> rpc;
  Clock::time_point start;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::ifstream f(o.payload_file, std::ios::binary);
  if (!f) usage("cannot read " + o.payload_file);
  std::stringstream buf;
  buf << f.rdbuf();
  const grpc::Slice payload(buf.str());

  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < o.channels; i++) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one TCP connection per channel
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args)));
  }
  grpc::CompletionQueue cq;
  long issued = 0;
  auto start = [&](Call* c) {
    grpc::Slice s(payload);
    grpc::ByteBuffer request(&s, 1);
    for (const auto& [k, v] : o.metadata) c->ctx.AddMetadata(k, v);
    c->start = Clock::now();
    c->rpc = stubs[issued++ % stubs.size()]->PrepareUnaryCall(&c->ctx, o.method, request, &cq);
    c->rpc->StartCall();
    c->rpc->Finish(&c->response, &c->status, c);
  };
  void* tag;
  bool ok;
  for (int i = 0; i < o.warmup * o.channels; i++) {  // connect and warm every channel
    auto call = std::make_unique<Call>();
    start(call.get());
    cq.Next(&tag, &ok);
    if (!call->status.ok()) {
      std::cerr << "grpc_load: warm-up call failed: " << call->status.error_code() << " "
                << call->status.error_message() << "\n";
      return 1;
    }
  }
  issued = 0;
  std::vector<double> latencies;
  latencies.reserve(1 << 16);
  std::map<int, long> errors;
  const auto t0 = Clock::now();
  const auto stop_at = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  auto more = [&] { return o.count ? issued < o.count : Clock::now() < stop_at; };
  long inflight = 0;
  for (int i = 0; i < o.concurrency && more(); i++, inflight++) start(new Call);
  while (inflight > 0 && cq.Next(&tag, &ok)) {
    std::unique_ptr<Call> c(static_cast<Call*>(tag));
    const auto now = Clock::now();
    if (c->status.ok()) latencies.push_back(std::chrono::duration<double>(now - c->start).count());
    else errors[c->status.error_code()]++;
    inflight--;
    if (more()) {
      start(new Call);
      inflight++;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::ostringstream out;
  out.precision(7);
  out << "{\"calls\": " << latencies.size() << ", \"elapsed\": " << elapsed << ", \"errors\": {";
  const char* sep = "";
  for (const auto& [code, n] : errors) {
    out << sep << "\"" << code << "\": " << n;
    sep = ", ";
  }
  out << "}, \"latencies\": [";
  sep = "";
  for (double l : latencies) {
    out << sep << l;
    sep = ", ";
  }
  out << "]}\n";
  std::cout << out.str();
  return 0;
}
