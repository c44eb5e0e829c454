// aiorpc: everything a server, client or role-module author needs, in one include.
// Link with `pkg-config --cflags --libs aiorpc` (or `dependency('aiorpc')` in meson).
#pragma once

#include "aiorpc/agents/heartbeat.h"
#include "aiorpc/agents/module.h"
#include "aiorpc/agents/role.h"
#include "aiorpc/core/address.h"
#include "aiorpc/core/callback.h"
#include "aiorpc/core/cidr.h"
#include "aiorpc/core/connection.h"
#include "aiorpc/core/connector.h"
#include "aiorpc/core/error.h"
#include "aiorpc/core/future.h"
#include "aiorpc/core/listener.h"
#include "aiorpc/core/log.h"
#include "aiorpc/core/loop.h"
#include "aiorpc/rpc/client.h"
#include "aiorpc/rpc/codec.h"
#include "aiorpc/rpc/errors.h"
#include "aiorpc/rpc/server.h"
#include "aiorpc/rpc/service.h"
#include "aiorpc/version.h"
