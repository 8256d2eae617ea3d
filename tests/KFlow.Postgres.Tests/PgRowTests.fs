// Tests for src/KFlow.Postgres/PgRow.fs: the dictionary and JSON row mappers give one value per field,
// in field order, with NULL for what is missing.
module KFlow.Postgres.Tests.PgRowTests

open System
open System.Collections.Generic
open System.Text.Json
open Expecto
open KFlow.Postgres

let tests =
    testList "PgRow" [
        test "a dictionary maps to its values in field order, missing fields as null" {
            let record = Dictionary<string, obj>()
            record["b"] <- box 2
            record["a"] <- box "one"
            record["extra"] <- box true
            let row = PgRow.ofDictionary [ "a"; "b"; "c" ] record
            Expect.sequenceEqual row [| box "one"; box 2; null |] "a, b, then null for c"
        }

        test "a JSON object maps to its properties in field order, missing ones as null" {
            use document = JsonDocument.Parse """{"b": 2, "a": "one", "n": null}"""
            let row = PgRow.ofJson [ "a"; "b"; "n"; "c" ] document.RootElement
            Expect.equal ((row[0] :?> JsonElement).GetString()) "one" "a"
            Expect.equal ((row[1] :?> JsonElement).GetInt32()) 2 "b"
            Expect.equal (row[2] :?> JsonElement).ValueKind JsonValueKind.Null "n is JSON null"
            Expect.isNull row[3] "c is missing"
        }

        test "a JSON value that is not an object is refused" {
            use document = JsonDocument.Parse "[1, 2]"

            let e =
                Expect.throwsC (fun () -> PgRow.ofJson [ "a" ] document.RootElement |> ignore) id

            Expect.stringContains e.Message "takes objects" "says what it takes"
        }
    ]
