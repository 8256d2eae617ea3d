// Tests for src/KFlow.Kafka/KeyCache.fs: the key strings a partition loop decodes, shared while a key
// recurs and always equal to the key's UTF-8 text.
module KFlow.Kafka.Tests.KeyCacheTests

open System
open System.Text
open Expecto
open KFlow.Kafka

let private bytes (s: string) = Encoding.UTF8.GetBytes s

let tests =
    testList "KeyCache" [
        test "KeyCache / a recurring key gets the string decoded for it before" {
            let cache = KeyCache()
            let first = cache.Decode(bytes "key-42")
            let again = cache.Decode(bytes "key-42")
            Expect.equal again "key-42" "the key's text"
            Expect.isTrue (Object.ReferenceEquals(first, again)) "one string for both messages"
        }

        test "KeyCache / a null or empty key is the empty string" {
            let cache = KeyCache()
            Expect.equal (cache.Decode null) "" "null key"
            Expect.equal (cache.Decode [||]) "" "empty key"
        }

        test "KeyCache / keys sharing a slot each decode to their own text" {
            // One slot: every key shares it, so each takes it from the other.
            let cache = KeyCache 1

            let decoded =
                [ "a"; "b"; "a"; "b"; "b"; "a" ] |> List.map (fun k -> cache.Decode(bytes k))

            Expect.equal decoded [ "a"; "b"; "a"; "b"; "b"; "a" ] "every key decodes to its text"
        }

        test "KeyCache / a key is decoded as UTF-8" {
            let cache = KeyCache()
            Expect.equal (cache.Decode(bytes "clé-ü-€")) "clé-ü-€" "non-ASCII text"
            Expect.equal (cache.Decode(bytes "clé-ü-€")) "clé-ü-€" "from the cache"
        }

        test "KeyCache / a size that is not a power of 2 is refused" {
            Expect.throwsT<ArgumentException> (fun () -> KeyCache 3 |> ignore) "size 3"
            Expect.throwsT<ArgumentException> (fun () -> KeyCache 0 |> ignore) "size 0"
        }
    ]
