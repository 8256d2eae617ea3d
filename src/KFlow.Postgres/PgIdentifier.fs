// A PostgreSQL table or column name, possibly schema-qualified, and its quoted SQL form: the only way
// the sink puts a name into SQL, so no identifier is ever spliced in unquoted.
namespace KFlow.Postgres

open System
open System.Text

/// <summary>A table name with an optional schema, as written in the sink's configuration.</summary>
/// <remarks>
/// Names are exact (case-sensitive, no folding to lower case), as stored in the catalog.
/// A dot separates the schema from the table; a part in double quotes may hold dots
/// (<c>"my.schema"."my table"</c>, with <c>""</c> for a quote inside).
/// </remarks>
type PgIdentifier = {
    /// The schema, if the name is qualified (None: the first match on the search_path).
    Schema: string option
    /// The table's own name.
    Name: string
} with

    /// The quoted SQL form, e.g. "public"."my_table".
    member identifier.Sql =
        let quote (part: string) =
            "\"" + part.Replace("\"", "\"\"") + "\""

        match identifier.Schema with
        | Some schema -> quote schema + "." + quote identifier.Name
        | None -> quote identifier.Name

    /// The readable form used in messages: schema.name, unquoted.
    override identifier.ToString() =
        match identifier.Schema with
        | Some schema -> schema + "." + identifier.Name
        | None -> identifier.Name

/// Parsing and quoting of identifiers.
[<RequireQualifiedAccess>]
module PgIdentifier =

    /// A name in double quotes, with inner quotes doubled: safe to place in SQL whatever it holds.
    let quote (name: string) =
        "\"" + name.Replace("\"", "\"\"") + "\""

    /// Splits "schema.table" (parts optionally in double quotes) into its parts; raises on bad syntax.
    let private parts (text: string) =
        let fail why =
            raise (
                ArgumentException(
                    $"Table name '{text}' is not valid: {why}. Write table, schema.table, or quote a part \
                      that holds a dot: \"my.schema\".\"table\".",
                    "table"
                )
            )

        let result = ResizeArray<string>()
        let current = StringBuilder()
        let mutable i = 0
        let mutable quoted = false
        let mutable partStarted = false

        while i < text.Length do
            let c = text[i]

            if quoted then
                if c = '"' then
                    if i + 1 < text.Length && text[i + 1] = '"' then
                        current.Append '"' |> ignore
                        i <- i + 1
                    else
                        quoted <- false
                else
                    current.Append c |> ignore
            elif c = '"' then
                if current.Length > 0 then
                    fail "a quote may only open a part"

                quoted <- true
                partStarted <- true
            elif c = '.' then
                if current.Length = 0 then
                    fail "a part is empty"

                result.Add(current.ToString())
                current.Clear() |> ignore
                partStarted <- false
            else
                current.Append c |> ignore
                partStarted <- true

            i <- i + 1

        if quoted then
            fail "a quote is not closed"

        if current.Length = 0 then
            fail (
                if partStarted then
                    "a part is empty"
                else
                    "the name is empty"
            )

        result.Add(current.ToString())
        List.ofSeq result

    /// <summary>Parses a table name: <c>table</c>, <c>schema.table</c>, or quoted parts.</summary>
    /// <remarks>Raises ArgumentException with the accepted forms when the text is not one of them.</remarks>
    let parse (text: string) : PgIdentifier =
        if String.IsNullOrWhiteSpace text then
            raise (ArgumentException("The table name is empty; give table or schema.table.", "table"))

        match parts (text.Trim()) with
        | [ name ] -> { Schema = None; Name = name }
        | [ schema; name ] -> { Schema = Some schema; Name = name }
        | _ ->
            raise (
                ArgumentException(
                    $"Table name '{text}' has more than two parts; give table or schema.table \
                      (the database comes from the connection).",
                    "table"
                )
            )

    /// The quoted SQL form of a table name.
    let sql (identifier: PgIdentifier) = identifier.Sql
