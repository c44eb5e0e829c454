// The seed's "aggregation": call one service, fan out to another for each item, combine.
// Runs city_finder, item_finder and bar on one loop, calls bar.aggregation, prints the result.
#include <cstdio>

#include "aiorpc/rpc/client.h"
#include "aiorpc/rpc/server.h"

using namespace aiorpc;
using namespace aiorpc::rpc;

int main() {
  core::Loop loop;
  ClientPool pool(loop);

  Service cities("city_finder"), items("item_finder"), bar("bar");
  cities.def(
      "items_in_city",
      [](std::string city, std::optional<std::string> district) {
        int n = city == "paris" ? 3 : 1;  // a stand-in for a real lookup
        std::vector<std::map<std::string, int>> out;
        for (int i = 1; i <= n; ++i) out.push_back({{"id", district ? 100 + i : i}});
        return out;
      },
      arg("city"), arg("district") = nullptr);
  items.def(
      "get_item",
      [](int id) {
        return std::map<std::string, int>{{"id", id}, {"price", id * 10}};
      },
      arg("id"));
  Server s1(loop, cities), s2(loop, items), s3(loop, bar);
  auto city_finder = *s1.listen("127.0.0.1:0");
  auto item_finder = *s2.listen("127.0.0.1:0");

  // --- the handler: about 15 lines, pipelined on one connection per endpoint ---
  bar.def(
      "aggregation",
      [&](std::string city, std::optional<std::string> district) -> core::Task<std::vector<Value>> {
        Value found = co_await pool.get(city_finder)
                          .call("items_in_city", kw("city", city), kw("district", district));
        std::vector<core::Future<Value>> lookups;
        for (uint32_t i = 0; i < found.view().size(); ++i)
          lookups.push_back(pool.get(item_finder).call("get_item", *found.view()[i].find("id")));
        co_return co_await core::all(std::move(lookups));
      },
      arg("city"), arg("district") = nullptr);
  // ---

  auto bar_addr = *s3.listen("127.0.0.1:0");
  Client client(loop, bar_addr);
  auto result = client.call("aggregation", "paris");
  while (!result.done()) loop.runOnce();
  try {
    std::printf("%s\n", result.get().view().toText().c_str());
  } catch (const RpcError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
