// The translation unit that owns integration_pch.hpp's precompiled header.
