// Tests for src/KFlow.Postgres/UpsertConfig.fs: a configuration's defaults, its With functions, and the
// checks that refuse a bad setting with a message naming it (no server needed).
module KFlow.Postgres.Tests.UpsertConfigTests

open System
open Expecto
open KFlow.Postgres

/// A configuration of table t (k, v; key k) for a server that is never contacted.
let private config () : UpsertConfig<obj[]> =
    UpsertConfig.create (PgConnection.ConnectionString "Host=unused") "t" [ "k"; "v" ] [ "k" ] id

/// The ArgumentException's message for a configuration the checks refuse.
let private refusal (config: UpsertConfig<obj[]>) : string =
    try
        UpsertConfig.validate config
        failtest "the configuration was accepted"
    with :? ArgumentException as e ->
        e.Message

let tests =
    testList "UpsertConfig" [
        test "create holds the documented defaults" {
            let c = config ()
            Expect.equal c.Pipelining 32 "Pipelining"
            Expect.equal c.Statements 2 "Statements"
            Expect.equal c.StatementRows 16384 "StatementRows"
            Expect.equal c.Retry PgRetry.defaults "Retry"
            Expect.isNone c.ExactlyOnce "not exactly-once"
            UpsertConfig.validate c
        }

        test "withGroupCommit sets both the statements and the rows one statement joins" {
            let c = config () |> UpsertConfig.withGroupCommit 4 1000
            Expect.equal (c.Statements, c.StatementRows) (4, 1000) "both set"
        }

        test "pipelining, statements and statement rows below 1 are refused with the setting named" {
            let named (setting: string) (c: UpsertConfig<obj[]>) =
                Expect.stringContains (refusal c) setting $"names {setting}"

            named "UpsertConfig.Pipelining" (config () |> UpsertConfig.withPipelining 0)
            named "UpsertConfig.Statements" (config () |> UpsertConfig.withGroupCommit 0 100)
            named "UpsertConfig.StatementRows" (config () |> UpsertConfig.withGroupCommit 1 0)
        }

        test "exactly-once mode may have no keys; upserts may not" {
            let noKeys = { config () with Keys = [] }
            Expect.stringContains (refusal noKeys) "UpsertConfig.Keys is empty" "upserts need keys"
            UpsertConfig.validate (noKeys |> UpsertConfig.withExactlyOnce "group")
        }
    ]
