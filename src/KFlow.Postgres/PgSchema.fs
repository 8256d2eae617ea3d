// What the sink learns about its table at start-up: that it exists, the columns it writes with their
// types, and a unique key the upsert can use. Every problem is reported then, with what to do.
namespace KFlow.Postgres

open System
open System.Threading.Tasks
open Npgsql

/// A column of the target table, as the catalog describes it.
type PgColumn = {
    /// The column's exact name.
    Name: string
    /// Its type, or None when the sink cannot write it.
    Type: PgType option
    /// Its type as PostgreSQL names it, e.g. "numeric(10,2)".
    TypeName: string
    /// Whether it is NOT NULL.
    NotNull: bool
    /// Whether an insert that omits it gets a value anyway (a default, identity or generated column).
    Defaulted: bool
    /// Whether the sink may not write it (GENERATED ALWAYS identity or generated column).
    ReadOnly: bool
    /// Its collation as a quoted SQL name when it is not its type's default (e.g. a case-insensitive
    /// ICU collation, under which 'a' and 'A' are one key), else None.
    Collation: string option
}

/// The target table as found at start-up.
type PgTable = {
    /// The table's name as configured.
    Name: PgIdentifier
    /// Its columns in table order.
    Columns: PgColumn list
    /// The column sets of its primary key and unique constraints usable by ON CONFLICT
    /// (not partial, not on expressions, not deferrable).
    UniqueKeys: Set<string> list
}

/// Introspection and validation of the target table.
[<RequireQualifiedAccess>]
module PgSchema =

    let private tableSql =
        "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)"

    let private columnsSql =
        "SELECT a.attname::text, t.typname::text, et.typname::text, \
                pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', \
                a.attidentity = 'a' OR a.attgenerated <> '', \
                CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                     THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
         LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
         LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum"

    let private uniqueKeysSql =
        "SELECT ARRAY(SELECT a.attname::text \
                      FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position) \
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE k.position <= i.indnkeyatts) \
         FROM pg_catalog.pg_index i \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate \
           AND i.indpred IS NULL AND i.indexprs IS NULL"

    let private relationKind =
        function
        | "v" -> "a view"
        | "m" -> "a materialized view"
        | "f" -> "a foreign table"
        | "S" -> "a sequence"
        | "i"
        | "I" -> "an index"
        | "c" -> "a composite type"
        | other -> $"a relation of kind '{other}'"

    let private fail (message: string) =
        raise (InvalidOperationException message)

    /// The rows of a catalog query about one relation ($1 is its oid), each read by `read`.
    let private rowsOf
        (connection: NpgsqlConnection)
        (sql: string)
        (oid: uint32)
        (read: Data.Common.DbDataReader -> 'row)
        : Task<'row list> =
        task {
            use command = new NpgsqlCommand(sql, connection)

            command.Parameters.Add(NpgsqlParameter(Value = oid, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Oid))
            |> ignore

            use! reader = command.ExecuteReaderAsync()
            let rows = ResizeArray()
            let mutable more = true

            while more do
                let! next = reader.ReadAsync()

                if next then rows.Add(read reader) else more <- false

            return List.ofSeq rows
        }

    /// <summary>Reads the table's columns and unique keys; raises if it does not exist or is not a table.</summary>
    /// <param name="connection">An open connection.</param>
    /// <param name="table">The table name.</param>
    let load (connection: NpgsqlConnection) (table: PgIdentifier) : Task<PgTable> = task {
        let! oid = task {
            use command = new NpgsqlCommand(tableSql, connection)
            command.Parameters.Add(NpgsqlParameter(Value = table.Sql)) |> ignore
            use! reader = command.ExecuteReaderAsync()
            let! found = reader.ReadAsync()

            if not found then
                let where =
                    match table.Schema with
                    | Some schema -> $"in schema {schema}"
                    | None -> "on the search_path"

                return
                    fail
                        $"Table {table} does not exist ({where}). Create it, or fix UpsertConfig.Table; \
                          names are exact (case-sensitive), so write schema.table as it appears in the catalog."
            else
                let oid = reader.GetFieldValue<uint32> 0
                let kind = reader.GetString 1

                if kind <> "r" && kind <> "p" then
                    return
                        fail
                            $"{table} is {relationKind kind}, not a table; the sink upserts into a table \
                              (fix UpsertConfig.Table)."
                else
                    return oid
        }

        let! columns =
            rowsOf connection columnsSql oid (fun reader ->
                let typname = reader.GetString 1
                let elementTypname = if reader.IsDBNull 2 then null else reader.GetString 2
                let typeName = reader.GetString 3

                {
                    Name = reader.GetString 0
                    Type = PgValue.tryType typname elementTypname typeName
                    TypeName = typeName
                    NotNull = reader.GetBoolean 4
                    Defaulted = reader.GetBoolean 5
                    ReadOnly = reader.GetBoolean 6
                    Collation = if reader.IsDBNull 7 then None else Some(reader.GetString 7)
                })

        let! uniqueKeys =
            rowsOf connection uniqueKeysSql oid (fun reader -> Set.ofArray (reader.GetFieldValue<string[]> 0))

        return {
            Name = table
            Columns = columns
            UniqueKeys = uniqueKeys
        }
    }

    let private listed (names: string seq) =
        names |> Seq.map (fun n -> "\"" + n + "\"") |> String.concat ", "

    /// <summary>Checks that the table can take upserts of these fields keyed by these keys.</summary>
    /// <returns>The fields' columns, in the order of the fields.</returns>
    /// <remarks>
    /// Raises InvalidOperationException naming the table and column, and saying what to do, when a
    /// field is not a column, a column's type cannot be written, a field is read-only, a NOT NULL column
    /// without a default is not among the fields, or no primary key / unique constraint covers
    /// exactly the keys.
    /// </remarks>
    let validate (fields: string list) (keys: string list) (table: PgTable) : PgColumn list =
        let byName = table.Columns |> List.map (fun c -> c.Name, c) |> Map.ofList

        let columns =
            fields
            |> List.map (fun field ->
                match Map.tryFind field byName with
                | None ->
                    fail
                        $"Table {table.Name} has no column \"{field}\" (named in UpsertConfig.Fields). Its columns \
                          are {listed (table.Columns |> List.map _.Name)}. Fix the field name (names are exact, \
                          case-sensitive) or add the column: ALTER TABLE {table.Name.Sql} ADD COLUMN ..."
                | Some column ->
                    match column.Type with
                    | None ->
                        fail
                            $"Column \"{field}\" of {table.Name} has type {column.TypeName}, which the sink cannot \
                              write. Supported types: {PgValue.supportedTypes}. Change the column's type or \
                              leave it out of UpsertConfig.Fields."
                    | Some _ when column.ReadOnly ->
                        fail
                            $"Column \"{field}\" of {table.Name} is generated (or GENERATED ALWAYS AS IDENTITY), \
                              so it cannot be written; leave it out of UpsertConfig.Fields."
                    | Some _ -> column)

        let fieldSet = Set.ofList fields

        match
            table.Columns
            |> List.filter (fun c -> c.NotNull && not c.Defaulted && not (fieldSet.Contains c.Name))
        with
        | [] -> ()
        | missing ->
            fail
                $"Table {table.Name} has NOT NULL column(s) {listed (missing |> List.map _.Name)} without a \
                  default that are not in UpsertConfig.Fields, so every insert would fail. Add them to Fields, or \
                  give them a default."

        let keySet = Set.ofList keys

        if not keys.IsEmpty && not (table.UniqueKeys |> List.contains keySet) then
            let keyList = keys |> List.map PgIdentifier.quote |> String.concat ", "

            let present =
                match table.UniqueKeys with
                | [] -> "it has none"
                | keys ->
                    "it has "
                    + (keys |> List.map (fun k -> "(" + listed k + ")") |> String.concat ", ")

            fail
                $"Table {table.Name} has no primary key or unique constraint on exactly ({listed keys}) \
                  (UpsertConfig.Keys), so an upsert cannot find the row to update; {present}. Add one, e.g. \
                  ALTER TABLE {table.Name.Sql} ADD PRIMARY KEY ({keyList}), \
                  or change Keys. Partial, expression and deferrable unique indexes cannot be used."

        columns
