// Ready-made row mappers: how a dictionary or a JSON object becomes the sink's row (one value per
// field, in field order). An F# record maps with a plain function `fun r -> [| box r.A; box r.B |]`.
namespace KFlow.Postgres

open System
open System.Collections.Generic
open System.Text.Json

/// Row mappers: functions from a record to its values in field order.
[<RequireQualifiedAccess>]
module PgRow =

    /// <summary>A mapper for dictionaries keyed by field name (exact, case-sensitive).</summary>
    /// <remarks>A field missing from the dictionary is written as NULL.</remarks>
    let ofDictionary (fields: string list) : IDictionary<string, obj> -> obj[] =
        let fields = Array.ofList fields

        fun (record: IDictionary<string, obj>) ->
            if isNull record then
                raise (
                    ArgumentNullException(
                        "record",
                        "A record to upsert is null; the batch must not hold nulls."
                    )
                )

            fields
            |> Array.map (fun field ->
                match record.TryGetValue field with
                | true, value -> value
                | false, _ -> null)

    /// <summary>A mapper for JSON objects: each field is the property of the same name.</summary>
    /// <remarks>
    /// A missing property or JSON null is written as NULL. Values are read by the column's type when
    /// written (see PgValue.normalize): numbers, strings (ISO 8601 timestamps, uuids, base64 bytea),
    /// booleans, arrays; a json/jsonb column takes the property's JSON as it is. Raises
    /// ArgumentException for an element that is not an object.
    /// </remarks>
    let ofJson (fields: string list) : JsonElement -> obj[] =
        let fields = Array.ofList fields

        fun (record: JsonElement) ->
            if record.ValueKind <> JsonValueKind.Object then
                raise (
                    ArgumentException(
                        $"A record to upsert is a JSON {record.ValueKind}; the JSON row mapper takes objects.",
                        "record"
                    )
                )

            fields
            |> Array.map (fun field ->
                match record.TryGetProperty field with
                | true, value -> box value
                | false, _ -> null)
